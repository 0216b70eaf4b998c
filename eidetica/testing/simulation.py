"""A seeded simulation of N eidetica nodes on the sim network, under trio's MockClock.

One node creates a tree, lets every other node write it (and anyone read it, when
the workload revokes); every node knows every other (``add_peer``, so links are
redialled after faults and restarts) and syncs the tree with each, except, in half
the seeds, a hub, which relates no tree itself and takes the tree in under its policy
(``"any"``, or a callable that takes it from the run's nodes).

Then a workload drawn from ``random.Random(seed)`` runs
(:class:`~eidetica.testing.kinds.Workload`): commits on random nodes, syncs asked
for, grants and revocations of write and admin by whichever node believes it may (a
refused one is part of the run), relations added and removed while the nodes stay
sound; and faults (:class:`~eidetica.testing.kinds.Faults`): partitions and heals,
dropped, delayed and duplicated requests, slow nodes, crashes (a SQLite node's engine
and storage cancelled at a checkpoint, then opened again from its file), clock jumps,
a node that goes for good, and quiet spells. Last, every fault is healed and the
timers run until the nodes agree (or a bound passes), and
:mod:`eidetica.testing.invariants` checks what must hold.

Everything a run does is drawn from the seed, in order, so a seed names a run: the
workload, the sim network's faults, each node's keys, entropy, nonces, ids and jitter
(its :class:`~eidetica.protocol.randomness.Randomness` is seeded from the run's seed
and its name), and trio's own scheduling tie-breaks; and each node's wall clock
follows the simulated one, so no reading of the machine's clock enters a run. The trace
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio
import trio.testing

import eidetica
import eidetica.events as news
from eidetica.actors.config import SyncConfig
from eidetica.actors.engine.policy import AcceptTrees
from eidetica.actors.sync import Sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import EideticaError, PermissionDenied, TreeNotFound
from eidetica.protocol.randomness import Randomness
from eidetica.storage.instance import Instance
from eidetica.storage.transaction import AtomicOp
from eidetica.storage.tree import Tree
from eidetica.testing.invariants import (
    InvariantBroken,
    counting,
    memory_bounded,
    nothing_acknowledged_lost,
    nothing_held,
    nothing_unauthorized,
    nothing_unverified,
    same_entries_and_documents,
    tasks_bounded,
)
from eidetica.testing.kinds import Faults, Workload
from eidetica.testing.relations import Relations

CONFIG = SyncConfig(
    periodic_sync=60.0,
    connection_check=20.0,
    retry_sweep=10.0,
    redial_max=30.0,
    shutdown_grace=1.0,
)
"""Timers short enough that a healed run settles within minutes of simulated time."""

WALL_EPOCH = 1_767_225_600.0
"""The nodes' Unix time when the run's clock reads 0 (2026-01-01): their wall clock
follows the ``MockClock``, jumps included, so no reading depends on the machine."""

SETTLE_WITHIN = 1_800.0
"""Simulated seconds the nodes have, once healed, to agree."""


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
    config: SyncConfig
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
        workload: Workload | None = None,
        directory: Path | None = None,
        config: SyncConfig = CONFIG,
    ) -> None:
        if nodes < 2:
            raise ValueError("a simulation needs at least two nodes")
        self.seed = seed
        self.steps = steps
        self.faults = faults or Faults()
        self.workload = workload or Workload()
        self.rng = random.Random(seed)
        self.network = SimNetwork(seed=seed)
        self.nodes = [
            _Node(f"n{i}", None if directory is None else directory / f"n{i}", config)
            for i in range(nodes)
        ]
        self.outcome = Outcome(seed)
        self.acknowledged: list[tuple[str, str]] = []
        self.tree = ""
        self._names: dict[str, str] = {}
        self.hub: _Node | None = None
        if self.workload.hub and nodes >= 3 and self.rng.random() < 0.5:
            self.hub = self.nodes[-1]
            self.hub.config = replace(config, accept_trees=self._hub_policy())
        self.relations = Relations()

    def _hub_policy(self) -> AcceptTrees:
        """``"any"``, or a callable that takes trees from the run's nodes only."""
        if self.rng.random() < 0.5:
            return "any"
        return lambda peer, tree: peer in self._names

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
            await self.check()
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
                        eidetica.open_instance(
                            node.path, randomness=randomness, wall_clock=_wall_clock
                        )
                    )
                    sync = await stack.enter_async_context(
                        inst.sync(network=self.network, name=node.name, config=node.config)
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
        if self.workload.permissions:
            await tree.grant("*", "read")  # a revoked writer still syncs: it reads
        for node in self.nodes[1:]:
            await tree.grant(node.key, "write")
        if self.hub is not None:
            policy = self.hub.config.accept_trees
            whom = "anyone" if policy == "any" else "the run's nodes"
            self._trace(f"{self.hub.name} is a hub taking trees from {whom}")
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    assert node.sync is not None
                    await node.sync.add_peer(other.key, f"sim://{other.name}")
                    if node is not self.hub:
                        await node.sync.add_tree_sync(other.key, self.tree)
                        self.relations.add(node.name, other.name)

    # The workload.

    async def _step(self, nursery: trio.Nursery, step: int) -> None:
        rng, faults, work = self.rng, self.faults, self.workload
        roll = rng.random()
        actions: list[tuple[float, bool, Callable[[], Awaitable[None]]]] = [
            (0.40, True, lambda: self._commit(step)),
            (0.48, True, self._ask_sync),
            (0.54, work.permissions, self._permissions),
            (0.59, work.relationships, self._relate),
            (0.65, faults.partitions, self._partition),
            (0.68, faults.drops, self._drops),
            (0.71, faults.delays, self._delays),
            (0.74, faults.slow_nodes, self._slow),
            (0.76, faults.duplicates, self._duplicates),
            (0.82, faults.crashes, lambda: self._crash_or_restart(nursery)),
            (0.85, faults.clock_jumps, self._jump),
            (0.86, faults.departures, self._depart),
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

    async def _open(self, node: _Node | None) -> Tree | None:
        """``node``'s copy of the tree; None while it is down or has not pulled it."""
        if node is None or node.inst is None:
            return None
        try:
            return await node.inst.open_tree(self.tree)
        except TreeNotFound:
            return None

    async def _commit(self, step: int) -> None:
        node, key = self._pick(), f"k{self.rng.randrange(16)}"
        tree = await self._open(node)
        if node is None or tree is None:
            return
        try:
            async with tree.transaction() as op:
                op.doc("doc").set(key, {"step": step, "by": node.name})
        except PermissionDenied:
            self._trace(f"{node.name} may not commit {key}")
            return
        self._acknowledge(node, op, f"commit {key}")

    def _acknowledge(self, node: _Node, op: AtomicOp, what: str) -> None:
        """A commit returned: it must reach every node that syncs the tree."""
        if op.entry is not None:
            self.acknowledged.append((node.name, op.entry.id))
            self.outcome.commits += 1
            self._trace(f"{node.name} {what} {op.entry.id}")

    async def _permissions(self) -> None:
        """A node grants another write or admin, or takes the grant away (back to the
        read anyone has); it is refused when it is no admin as of its tips."""
        node, target = self._pick(), self.rng.choice(self.nodes[1:])  # the owner stays admin
        change = self.rng.choice(("write", "admin", "revoke"))
        tree = await self._open(node)
        if node is None or tree is None:
            return
        try:
            async with tree.transaction() as op:
                if change == "revoke":
                    op.settings().delete(("auth", target.key))
                else:
                    op.settings().set(("auth", target.key), change)
        except PermissionDenied:
            self._trace(f"{node.name} may not {change} {target.name}")
            return
        self._acknowledge(node, op, f"{change} {target.name}")

    async def _relate(self) -> None:
        """A node starts or stops syncing the tree with a peer; it stops only if every
        staying node still reaches every other."""
        staying = [node for node in self.nodes if not node.gone]
        a, b = self.rng.sample(staying, 2)
        if a.sync is None:
            return
        pair = (a.name, b.name)
        if pair not in self.relations:
            self._trace(f"{a.name} syncs with {b.name}")
            await a.sync.add_tree_sync(b.key, self.tree)
            self.relations.add(*pair)
        elif await self._sound(staying, without=pair):
            self._trace(f"{a.name} stops syncing with {b.name}")
            await a.sync.remove_tree_sync(b.key, self.tree)
            self.relations.remove(*pair)
        else:
            self._trace(f"{a.name} keeps syncing with {b.name}: the nodes need it")

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

    async def _sound(self, nodes: list[_Node], without: tuple[str, str] | None = None) -> bool:
        """Whether ``nodes`` all come to hold the tree and sync it with each other
        (:meth:`Relations.sound`); a node that is down counts as not holding it."""
        holders = [node.name for node in nodes if await self._open(node) is not None]
        hub = None if self.hub is None else self.hub.name
        names = [node.name for node in nodes]
        return self.relations.sound(names, holders=holders, hub=hub, without=without)

    async def _slow(self) -> None:
        node, seconds = self.rng.choice(self.nodes), self.rng.choice((0.0, 0.5, 3.0))
        self.outcome.faults += 1
        self._trace(f"{node.name} slow {seconds}")
        self.network.slow(node.name, seconds)

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
        rest = [other for other in staying if other is not node]
        if not all([await self._open(other) is not None for other in rest]):
            return  # the tree must live on without it: the others hold it first
        if not await self._sound(rest):
            return  # and they must still reach each other
        self._trace(f"{node.name} goes away for good")
        self.outcome.faults += 1
        node.gone = True
        if node.scope is not None:
            node.scope.cancel()
            await node.ended.wait()

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
            self.network.slow(node.name, 0.0)
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
        """Whether every staying node holds the same entries that count (see
        :func:`~eidetica.testing.invariants.same_entries_and_documents`) and no retry
        to a staying node waits."""
        held = set()
        for node in self.nodes:
            if node.gone:
                continue
            if node.inst is None or node.sync is None or await self._open(node) is None:
                return False
            held.add(counting(node.inst, self.tree))
            staying = {other.key for other in self.nodes if not other.gone}
            if any(retry.peer in staying for retry in (await node.sync.status()).retries):
                return False
        return len(held) == 1

    def instances(self) -> dict[str, Instance]:
        """The nodes running now, by name (n0 created the tree), for checks."""
        return {node.name: node.inst for node in self.nodes if node.inst is not None}

    async def check(self) -> None:
        """Check every invariant once the nodes agreed, all of them still running. A
        subclass may check more of its own (:meth:`instances`, :attr:`tree`) and call
        this too; :func:`run_seed` takes such a class."""
        up = [node for node in self.nodes if node.inst is not None and node.sync is not None]
        instances = self.instances()
        await same_entries_and_documents(instances, self.tree)
        nothing_acknowledged_lost(instances, self._should_be_everywhere(instances), self.tree)
        nothing_unverified(instances, self.tree)
        await nothing_unauthorized(instances, self.tree)
        await nothing_held(instances, self.tree)
        statuses = {node.name: await node.sync.status() for node in up if node.sync is not None}
        memory_bounded(statuses, peers=len(self.nodes) - 1)
        root = trio.lowlevel.current_root_task()
        assert root is not None, "a simulation runs inside trio.run"
        tasks_bounded(_count_tasks(root), nodes=len(self.nodes))

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


def _count_tasks(task: trio.lowlevel.Task) -> int:
    """``task`` and every task below it."""
    return 1 + sum(
        _count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks
    )


def _wall_clock() -> float:
    return WALL_EPOCH + trio.current_time()


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
    workload: Workload | None = None,
    sqlite: bool = True,
    simulation: type[Simulation] = Simulation,
) -> Outcome:
    """Run one seed to its end in a trio run of its own, under a ``MockClock``, with
    trio's scheduler seeded too; SQLite nodes live in a temporary directory.
    ``simulation`` may be a subclass that checks more (see :meth:`Simulation.check`)."""
    with (
        replayable_scheduling(seed),
        tempfile.TemporaryDirectory(prefix=f"eidetica-sim-{seed}-") as directory,
    ):
        run = simulation(
            seed,
            nodes=nodes,
            steps=steps,
            faults=faults,
            workload=workload,
            directory=Path(directory) if sqlite else None,
        )
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(run.run, clock=clock)
