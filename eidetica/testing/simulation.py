"""A seeded simulation of N eidetica nodes on the sim network, under trio's MockClock.

One node creates a tree and lets every other node write it; every node knows every
other (``add_peer``, so links are redialled after faults and restarts) and syncs the
tree with each. Then a workload drawn from ``random.Random(seed)`` runs: commits on
random nodes, syncs asked for, and faults — partitions and heals, dropped, delayed
and duplicated requests, crashes (a SQLite node's engine and storage cancelled at a
checkpoint, then opened again from its file), clock jumps and quiet spells. Last,
every fault is healed and the timers run until the nodes agree (or a bound passes),
and :mod:`eidetica.testing.invariants` checks what must hold.

Everything a run does is drawn from the seed, in order, so a seed names a run: the
workload, the sim network's faults, each node's keys, entropy, nonces, ids and jitter
(its :class:`~eidetica.protocol.randomness.Randomness` is seeded from the run's seed
and its name), and trio's own scheduling tie-breaks. The trace
(:attr:`Outcome.trace`) lists what happened in simulated time: the workload's steps,
each commit's entry id, and each node's events, with keys replaced by node names;
two runs of one seed give the same trace.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path

import trio
import trio.testing

import eidetica
import eidetica.events as news
from eidetica.actors.config import SyncConfig
from eidetica.actors.sync import Sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import EideticaError, TreeNotFound
from eidetica.protocol.randomness import Randomness
from eidetica.storage.instance import Instance
from eidetica.testing.invariants import (
    InvariantBroken,
    nothing_acknowledged_lost,
    nothing_held,
    nothing_unverified,
    same_tips_and_documents,
)

CONFIG = SyncConfig(
    periodic_sync=60.0,
    connection_check=20.0,
    retry_sweep=10.0,
    redial_max=30.0,
    shutdown_grace=1.0,
)
"""Timers short enough that a healed run settles within minutes of simulated time."""

SETTLE_WITHIN = 1_800.0
"""Simulated seconds the nodes have, once healed, to agree."""


@dataclass(frozen=True)
class Faults:
    """Which kinds of fault a run may draw."""

    partitions: bool = True
    drops: bool = True
    delays: bool = True
    duplicates: bool = True
    crashes: bool = True
    clock_jumps: bool = True
    departures: bool = True
    """One node may go away for good (never restarted; the others keep it as a peer)."""

    @classmethod
    def kinds(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, text: str) -> Faults:
        """``all``, ``none``, or a comma-separated list of kinds (``partitions,crashes``)."""
        names = cls.kinds()
        if text == "all":
            return cls()
        chosen = set() if text == "none" else {part.strip() for part in text.split(",")}
        unknown = chosen - set(names)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}: choose from {', '.join(names)}")
        return cls(**{name: name in chosen for name in names})


@dataclass
class Outcome:
    """What a run did, for its summary and for replay checks."""

    seed: int
    commits: int = 0
    crashes: int = 0
    faults: int = 0
    settle_seconds: float = 0.0
    trace: list[str] = field(default_factory=list)


@dataclass
class _Node:
    name: str
    path: Path | None
    key: str = ""
    inst: Instance | None = None
    sync: Sync | None = None
    scope: trio.CancelScope | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    """Set when its last run ended (a new one for each start)."""
    gone: bool = False
    """Went away for good: never started again, left out of the checks."""

    @property
    def up(self) -> bool:
        return self.sync is not None


class Simulation:
    """One seeded run; see the module docstring. Run it inside ``trio.run`` with a
    ``MockClock`` (:func:`run_seed` does)."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        steps: int = 60,
        faults: Faults | None = None,
        directory: Path | None = None,
        config: SyncConfig = CONFIG,
    ) -> None:
        if nodes < 2:
            raise ValueError("a simulation needs at least two nodes")
        self.seed = seed
        self.steps = steps
        self.faults = faults or Faults()
        self.config = config
        self.rng = random.Random(seed)
        self.network = SimNetwork(seed=seed)
        self.nodes = [
            _Node(f"n{i}", None if directory is None else directory / f"n{i}") for i in range(nodes)
        ]
        self.outcome = Outcome(seed)
        self.acknowledged: list[tuple[str, str]] = []
        self.tree = ""
        self._names: dict[str, str] = {}

    async def run(self) -> Outcome:
        """The whole run: set up, workload, heal, settle, check."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                await nursery.start(self._serve, node)
            await self._set_up()
            for step in range(self.steps):
                await self._step(nursery, step)
            await self._heal(nursery)
            await self._settle()
            await self._check()
            await self._stop_all(nursery)
        return self.outcome

    # Nodes.

    async def _serve(self, node: _Node, *, task_status: trio.TaskStatus[None]) -> None:
        """Run one node until its scope is cancelled (a crash, or the run's end)."""
        node.ended = ended = trio.Event()
        with trio.CancelScope() as scope:
            node.scope = scope
            try:
                async with AsyncExitStack() as stack:
                    randomness = Randomness.seeded(f"{self.seed}:{node.name}")
                    inst = await stack.enter_async_context(
                        eidetica.open_instance(node.path, randomness=randomness)
                    )
                    sync = await stack.enter_async_context(
                        inst.sync(network=self.network, name=node.name, config=self.config)
                    )
                    await sync.start_server(f"sim://{node.name}")
                    events = await stack.enter_async_context(sync.events())
                    node.inst, node.sync, node.key = inst, sync, inst.public_key
                    self._names[inst.public_key] = node.name
                    task_status.started()
                    async for event in events:
                        self._record(node, event)
            finally:
                node.inst = node.sync = None
                ended.set()

    def _record(self, node: _Node, event: news.Event) -> None:
        peer = self._names.get(getattr(event, "peer", ""), "")
        detail = ""
        if isinstance(event, news.SyncFinished):
            detail = f" received={event.received} complete={event.complete}"
        self._trace(f"{node.name} {type(event).__name__} {peer}{detail}")

    def _trace(self, line: str) -> None:
        self.outcome.trace.append(f"{trio.current_time():12.3f} {line}")

    async def _set_up(self) -> None:
        owner = self.nodes[0]
        assert owner.inst is not None
        tree = await owner.inst.create_tree(name="simulated")
        self.tree = tree.root_id
        for node in self.nodes[1:]:
            await tree.grant(node.key, "write")
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    assert node.sync is not None
                    await node.sync.add_peer(other.key, f"sim://{other.name}")
                    await node.sync.add_tree_sync(other.key, self.tree)

    # The workload.

    async def _step(self, nursery: trio.Nursery, step: int) -> None:
        rng, faults = self.rng, self.faults
        roll = rng.random()
        actions: list[tuple[float, bool, Callable[[], Awaitable[None]]]] = [
            (0.45, True, lambda: self._commit(step)),
            (0.55, True, self._ask_sync),
            (0.63, faults.partitions, self._partition),
            (0.67, faults.drops, self._drops),
            (0.71, faults.delays, self._delays),
            (0.74, faults.duplicates, self._duplicates),
            (0.80, faults.crashes, lambda: self._crash_or_restart(nursery)),
            (0.83, faults.clock_jumps, self._jump),
            (0.84, faults.departures, self._depart),
        ]
        for below, allowed, action in actions:
            if roll < below:
                if allowed:
                    await action()
                    return
                break
        quiet = rng.uniform(0.0, 20.0)
        self._trace(f"quiet {quiet:.3f}")
        await trio.sleep(quiet)

    def _pick(self) -> _Node | None:
        up = [node for node in self.nodes if node.up]
        return self.rng.choice(up) if up else None

    async def _commit(self, step: int) -> None:
        node, key = self._pick(), f"k{self.rng.randrange(16)}"
        if node is None or node.inst is None:
            return
        try:
            tree = await node.inst.open_tree(self.tree)
        except TreeNotFound:
            return  # not pulled yet
        async with tree.transaction() as op:
            op.doc("doc").set(key, {"step": step, "by": node.name})
        if op.entry is not None:
            self.acknowledged.append((node.name, op.entry.id))
            self.outcome.commits += 1
            self._trace(f"{node.name} commit {key} {op.entry.id}")

    async def _ask_sync(self) -> None:
        node, other = self._pick(), self._pick()
        if node is None or other is None or other is node or node.sync is None:
            return
        self._trace(f"{node.name} asks a sync with {other.name}")
        # A fault on the way may fail it: what it would have done, the timers do.
        with trio.move_on_after(30), contextlib.suppress(EideticaError):
            await node.sync.sync_with_peer(other.key, self.tree)

    async def _partition(self) -> None:
        a, b = self.rng.sample(self.nodes, 2)
        self.outcome.faults += 1
        if self.rng.random() < 0.6:
            self._trace(f"partition {a.name} {b.name}")
            self.network.partition(a.name, b.name)
        else:
            self._trace(f"heal {a.name} {b.name}")
            self.network.heal(a.name, b.name)

    async def _drops(self) -> None:
        probability = self.rng.choice((0.0, 0.05, 0.2))
        self.outcome.faults += 1
        self._trace(f"drop {probability}")
        self.network.drop(probability)

    async def _delays(self) -> None:
        seconds, jitter = self.rng.choice((0.0, 0.1, 1.0)), self.rng.choice((0.0, 0.5))
        self.outcome.faults += 1
        self._trace(f"delay {seconds} jitter {jitter}")
        self.network.delay(seconds, jitter)

    async def _duplicates(self) -> None:
        probability = self.rng.choice((0.0, 0.2))
        self.outcome.faults += 1
        self._trace(f"duplicate {probability}")
        self.network.duplicate(probability)

    async def _depart(self) -> None:
        staying = [node for node in self.nodes if not node.gone]
        if len(staying) <= 2 or len(staying) < len(self.nodes):
            return  # one departure a run, and two nodes stay at least
        node = self.rng.choice(staying)
        if not all([await self._holds_tree(other) for other in staying if other is not node]):
            return  # the tree must live on without it: the others hold it first
        self._trace(f"{node.name} goes away for good")
        self.outcome.faults += 1
        node.gone = True
        if node.scope is not None:
            node.scope.cancel()
            await node.ended.wait()

    async def _holds_tree(self, node: _Node) -> bool:
        if node.inst is None:
            return False
        try:
            await node.inst.open_tree(self.tree)
        except TreeNotFound:
            return False
        return True

    async def _crash_or_restart(self, nursery: trio.Nursery) -> None:
        down = [node for node in self.nodes if not node.up and not node.gone]
        if down:
            node = self.rng.choice(down)
            self._trace(f"restart {node.name}")
            await nursery.start(self._serve, node)
            return
        node = self.rng.choice([node for node in self.nodes if not node.gone])
        if node.path is None or node.scope is None:
            return  # a node in memory has nothing to come back from
        self._trace(f"crash {node.name}")
        self.outcome.crashes += 1
        node.scope.cancel()
        await node.ended.wait()

    async def _jump(self) -> None:
        seconds = self.rng.uniform(60.0, 3_600.0)
        self.outcome.faults += 1
        self._trace(f"clock jumps {seconds:.3f}")
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            clock.jump(seconds)

    # The end.

    async def _heal(self, nursery: trio.Nursery) -> None:
        self._trace("heal all")
        self.network.heal_all()
        self.network.drop(0.0)
        self.network.delay(0.0)
        self.network.duplicate(0.0)
        for node in self.nodes:
            if not node.up and not node.gone:
                await nursery.start(self._serve, node)

    async def _settle(self) -> None:
        """Let the timers run until every node holds the same tips and no retry waits."""
        began = trio.current_time()
        while trio.current_time() - began < SETTLE_WITHIN:
            if await self._agreed():
                self.outcome.settle_seconds = trio.current_time() - began
                self._trace(f"settled after {self.outcome.settle_seconds:.3f}")
                return
            await trio.sleep(1.0)
        raise InvariantBroken(f"the nodes did not agree within {SETTLE_WITHIN:.0f} s of healing")

    async def _agreed(self) -> bool:
        tips = set()
        for node in self.nodes:
            if node.gone:
                continue
            if node.inst is None or node.sync is None:
                return False
            try:
                tips.add(tuple(await (await node.inst.open_tree(self.tree)).tips()))
            except TreeNotFound:
                return False
            if (await node.sync.status()).retries:
                return False
        return len(tips) == 1

    async def _check(self) -> None:
        instances = {node.name: node.inst for node in self.nodes if node.inst is not None}
        await same_tips_and_documents(instances, self.tree)
        nothing_acknowledged_lost(instances, self._should_be_everywhere(instances))
        nothing_unverified(instances, self.tree)
        nothing_held(instances, self.tree)

    def _should_be_everywhere(self, staying: dict[str, Instance]) -> list[tuple[str, str]]:
        """The acknowledged commits the staying nodes must all hold: all of theirs, and
        those of a node gone for good that reached one of them before it went."""
        return [
            (author, entry_id)
            for author, entry_id in self.acknowledged
            if author in staying
            or any(inst.backend.get(entry_id) is not None for inst in staying.values())
        ]

    async def _stop_all(self, nursery: trio.Nursery) -> None:
        """Stop every node; then no task of any may be left running."""
        with trio.move_on_after(60):
            for node in self.nodes:
                if node.scope is not None:
                    node.scope.cancel()
                    await node.ended.wait()
        if nursery.child_tasks:
            names = sorted(task.name for task in nursery.child_tasks)
            raise InvariantBroken(f"tasks left a minute after every node stopped: {names}")


@contextlib.contextmanager
def replayable_scheduling(seed: int) -> Iterator[None]:
    """Make trio's scheduler draw its tie-breaks from ``seed`` for the block.

    trio shuffles each batch of runnable tasks with a generator of its own; it has a
    switch for deterministic scheduling (which its Hypothesis plugin flips). Both are
    trio's private names: this is the one place that touches them, and a trio release
    that renames them fails here, loudly."""
    scheduler = trio._core._run
    flag, generator = scheduler._ALLOW_DETERMINISTIC_SCHEDULING, scheduler._r
    scheduler._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    scheduler._r = random.Random(seed)
    try:
        yield
    finally:
        scheduler._ALLOW_DETERMINISTIC_SCHEDULING = flag  # type: ignore[misc]
        scheduler._r = generator


def run_seed(
    seed: int,
    *,
    nodes: int = 3,
    steps: int = 60,
    faults: Faults | None = None,
    sqlite: bool = True,
) -> Outcome:
    """Run one seed to its end in a trio run of its own, under a ``MockClock``, with
    trio's scheduler seeded too; SQLite nodes live in a temporary directory."""
    with (
        replayable_scheduling(seed),
        tempfile.TemporaryDirectory(prefix=f"eidetica-sim-{seed}-") as directory,
    ):
        simulation = Simulation(
            seed,
            nodes=nodes,
            steps=steps,
            faults=faults,
            directory=Path(directory) if sqlite else None,
        )
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(simulation.run, clock=clock)
