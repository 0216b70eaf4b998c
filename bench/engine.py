"""What the sync engine costs at run time: how soon a commit shows on a peer, and
how much memory an idle peer holds.

*Commit to visible.* Two nodes A and B on the sim transport, linked both ways on one
tree that B may write, with the initial sync done. For each of :data:`COMMITS`
commits on A (one document write each), the wall-clock time from just before the
commit until ``await tree.doc("d")`` on B shows the new value. That is the whole
push path: the commit hook's notice, the supervisor, A's peer actor for B, the sim
request, B's verifying and storing, and B's document cache. The bench does not sleep
to wait: it polls B at every scheduler checkpoint, so a poll costs one trip round
trio's run queue, and after each commit it waits for both nodes to fall idle before
the next, so each figure starts from rest. It is measured with in-memory nodes and
with SQLite nodes; "commit" is the median time of A's own commit, "polls" the
median number of checkpoints B was polled at before the value showed. The sim
transport has no latency, so this is the engine's own overhead, the floor under any
real network's round trip.

*Memory per idle peer.* Node A connects to :data:`PEERS` nodes, each an in-memory
instance running the engine and a sim server, and adds one tree relationship with
each (the same tree). Allocations are traced with :mod:`tracemalloc` from just before
the first connect until every peer is registered and every task idle, and the
growth is divided by the number of peers. A's side is every allocation with a
frame of ``eidetica/actors/supervisor.py`` in its stack (A's per-peer work all
starts there), in two parts:

- the engine's state in memory: the link with its session, the peer actor task and
  its coroutines, its job channel and the cloned report channel, the health record
  with its deque, the supervisor's ``_Peer`` entry and dict slot, and the tree
  relationship set;
- the sync tree's records (allocations under ``eidetica/actors/state.py``): the
  supervisor writes the peer and the relationship through to the node's sync tree,
  a signed entry each, which on this in-memory A stay in memory (the backend's
  entries and indexes, the cached folded document); on SQLite they go to disk.

Everything else that stayed allocated is the other nodes' handshake sessions; the
table shows the total too. A breakdown shows which line of eidetica each part of the
engine's state comes from. For context, the same test runs first without tracing, for
peak RSS (``getrusage``: a high-water mark of the whole process, the other nodes
included) and for how long the connections take; tracing slows them severalfold.

Real time throughout (``time.perf_counter``, trio's real clock). The idle peers
test uses long timer periods so that no periodic sync or connection check runs
while it measures.
"""

from __future__ import annotations

import functools
import gc
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
import trio.testing

import eidetica
import eidetica.actors.state
import eidetica.actors.supervisor
from bench._table import print_table
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from tests.sim.test_sync_engine import Node, link

COMMITS = 500
VISIBLE_WITHIN = 10.0
"""Seconds a commit may take to show on B before the benchmark gives up."""
PEERS = 1_000
BUILD_BUDGET = 60.0
"""Seconds to spend starting the idle peers' nodes; fewer than PEERS if it runs out."""
TRACE_FRAMES = 32
"""Frames kept per traced allocation: deep enough to reach the supervisor's frames
(the deepest stacks here are under 20 frames; the run says if any was cut short)."""
BREAKDOWN_ROWS = 12
QUIET = SyncConfig(periodic_sync=86_400.0, connection_check=86_400.0, retry_sweep=86_400.0)
_SUPERVISOR_FILE = eidetica.actors.supervisor.__file__
_STATE_FILE = eidetica.actors.state.__file__
_PACKAGE = Path(eidetica.__file__).parent
SOURCE_WIDTH = 58


@asynccontextmanager
async def _node(
    network: SimNetwork, name: str, path: Path | None, config: SyncConfig | None = None
) -> AsyncIterator[Node]:
    """A node with its engine running and serving at ``sim://NAME``."""
    async with (
        eidetica.open_instance(path) as instance,
        open_sync(instance, network=network, name=name, config=config) as sync,
    ):
        yield Node(instance, sync, await sync.start_server(f"sim://{name}"))


# -- commit to visible ----------------------------------------------------------------


@dataclass
class _Visibility:
    """Per commit: seconds until visible on B, seconds of A's commit, polls of B."""

    visible: list[float]
    commit: list[float]
    polls: list[int]


async def _visibility(directory: Path | None, count: int) -> _Visibility:
    """Commit ``count`` times on A and time each until B shows it."""
    network = SimNetwork()
    result = _Visibility([], [], [])
    path_a = None if directory is None else directory / "a"
    path_b = None if directory is None else directory / "b"
    async with _node(network, "a", path_a) as a, _node(network, "b", path_b) as b:
        tree = await a.inst.create_tree("bench")
        await tree.grant(b.inst.public_key, "write")
        peer_b = await link(a, b, tree.root_id)
        await a.sync.sync_with_peer(peer_b)
        theirs = await b.inst.open_tree(tree.root_id)
        await trio.testing.wait_all_tasks_blocked()
        for index in range(count):
            began = time.perf_counter()
            async with tree.transaction() as op:
                op.doc("d").set("n", index)
            committed = time.perf_counter()
            polls = 0
            with trio.fail_after(VISIBLE_WITHIN):
                while (await theirs.doc("d")).get("n") != index:
                    await trio.lowlevel.checkpoint()
                    polls += 1
            result.visible.append(time.perf_counter() - began)
            result.commit.append(committed - began)
            result.polls.append(polls)
            await trio.testing.wait_all_tasks_blocked()
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _visibility_row(label: str, figures: _Visibility) -> list[str]:
    cuts = statistics.quantiles(figures.visible, n=100, method="inclusive")
    return [
        label,
        f"{len(figures.visible):,}",
        _ms(statistics.median(figures.visible)),
        _ms(cuts[89]),
        _ms(cuts[98]),
        _ms(max(figures.visible)),
        _ms(statistics.median(figures.commit)),
        f"{statistics.median(figures.polls):.0f}",
    ]


# -- memory per idle peer -------------------------------------------------------------


@dataclass
class _IdleRun:
    """One run of the idle peers test."""

    peers: int
    build_seconds: float
    connect_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    entries_written: int
    """Entries A stored while connecting: its sync tree's records."""
    snapshots: tuple[tracemalloc.Snapshot, tracemalloc.Snapshot] | None
    """Traced allocations before the first connect and once all is idle, if traced."""


async def _idle_node(
    network: SimNetwork,
    name: str,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One of the other nodes: serve until ``stop`` is set."""
    async with _node(network, name, None, QUIET) as node:
        task_status.started(node.address)
        await stop.wait()


async def _entry_count(instance: eidetica.Instance) -> int:
    """Entries the node holds, over all its trees."""
    return sum([len(await tree.entries()) for tree in await instance.trees()])


def _peak_rss_kib() -> int:
    """The process's peak resident set so far, in KiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _idle_peers(count: int, budget: float, *, traced: bool) -> _IdleRun:
    """Start up to ``count`` nodes (as many as ``budget`` seconds allow), then
    connect A to each, relate one tree, and wait until every task is idle."""
    network = SimNetwork()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses: list[str] = []
        began = time.perf_counter()
        while len(addresses) < count and time.perf_counter() - began < budget:
            addresses.append(await nursery.start(_idle_node, network, f"p{len(addresses)}", stop))
        build_seconds = time.perf_counter() - began
        async with _node(network, "a", None, QUIET) as a:
            tree = await a.inst.create_tree("bench")
            await trio.testing.wait_all_tasks_blocked()
            entries_before = await _entry_count(a.inst)
            gc.collect()
            rss_before = _peak_rss_kib()
            if traced:
                tracemalloc.start(TRACE_FRAMES)
            try:
                before = tracemalloc.take_snapshot() if traced else None
                began = time.perf_counter()
                for address in addresses:
                    peer = await a.sync.connect(address)
                    await a.sync.add_tree_sync(peer, tree.root_id)
                await trio.testing.wait_all_tasks_blocked()
                connect_seconds = time.perf_counter() - began
                gc.collect()
                after = tracemalloc.take_snapshot() if traced else None
            finally:
                tracemalloc.stop()
            rss_after = _peak_rss_kib()
            entries_written = await _entry_count(a.inst) - entries_before
            registered = len(await a.sync.peers())
            assert registered == len(addresses), f"{registered} of {len(addresses)} registered"
        stop.set()
    return _IdleRun(
        peers=len(addresses),
        build_seconds=build_seconds,
        connect_seconds=connect_seconds,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        entries_written=entries_written,
        snapshots=None if before is None or after is None else (before, after),
    )


Sources = dict[str, list[str]]
"""Source lines of eidetica's modules, by file name."""


def _read_sources() -> Sources:
    """eidetica's source as this process loaded it, so that a breakdown quotes the right
    lines even if someone edits the files while the benchmark runs."""
    return {str(path): path.read_text().splitlines() for path in _PACKAGE.rglob("*.py")}


def _eidetica_line(traceback: tracemalloc.Traceback, sources: Sources) -> tuple[str, str]:
    """The most recent frame of eidetica in ``traceback``: ``file:line`` and its source."""
    for frame in reversed(traceback):
        lines = sources.get(frame.filename)
        if lines is not None:
            where = f"{Path(frame.filename).relative_to(_PACKAGE)}:{frame.lineno}"
            code = lines[frame.lineno - 1].strip() if frame.lineno <= len(lines) else "?"
            if len(code) > SOURCE_WIDTH:
                code = code[: SOURCE_WIDTH - 3] + "..."
            return where, code
    return "(no eidetica frame)", ""


def _breakdown(snapshot: tracemalloc.Snapshot, sources: Sources) -> list[tuple[str, int, int]]:
    """(eidetica line and its source, bytes, blocks) of the snapshot's traces, largest
    first."""
    sizes: dict[tuple[str, str], list[int]] = {}
    for trace in snapshot.traces:
        cell = sizes.setdefault(_eidetica_line(trace.traceback, sources), [0, 0])
        cell[0] += trace.size
        cell[1] += 1
    width = max((len(where) for where, _ in sizes), default=0)
    rows = [
        (f"{where:<{width}}  {code}", size, blocks)
        for (where, code), (size, blocks) in sizes.items()
    ]
    return sorted(rows, key=lambda row: -row[1])


def _size(snapshot: tracemalloc.Snapshot) -> int:
    return sum(trace.size for trace in snapshot.traces)


def hub_bytes_per_peer(count: int, budget: float = BUILD_BUDGET) -> tuple[int, float, float]:
    """How many peers took part, and the bytes A holds per idle registered peer: its
    engine state alone, and with the sync-tree records it writes for each peer (which
    an in-memory A keeps in memory; on SQLite they go to disk). What a hub pays for
    each peer linked to it, apart from the peers' own nodes."""
    traced = trio.run(functools.partial(_idle_peers, count, budget, traced=True))
    assert traced.snapshots is not None
    _, after = traced.snapshots
    a_side = after.filter_traces([tracemalloc.Filter(True, _SUPERVISOR_FILE, all_frames=True)])
    engine = a_side.filter_traces([tracemalloc.Filter(False, _STATE_FILE, all_frames=True)])
    return traced.peers, _size(engine) / traced.peers, _size(a_side) / traced.peers


def _memory_row(label: str, size: int, peers: int) -> list[str]:
    return [label, f"{size / peers:,.0f}", f"{size / 2**20:.1f}"]


def _print_memory(plain: _IdleRun, traced: _IdleRun, sources: Sources) -> None:
    assert traced.snapshots is not None
    before, after = traced.snapshots
    peers = traced.peers
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    a_side = after.filter_traces([tracemalloc.Filter(True, _SUPERVISOR_FILE, all_frames=True)])
    records = a_side.filter_traces([tracemalloc.Filter(True, _STATE_FILE, all_frames=True)])
    engine = a_side.filter_traces([tracemalloc.Filter(False, _STATE_FILE, all_frames=True)])
    rss_grown = (plain.rss_after_kib - plain.rss_before_kib) * 1024
    print_table(
        f"Memory per idle registered peer ({peers:,} peers, one tree relationship each)",
        ["what", "bytes/peer", "MiB in all"],
        [
            _memory_row("A's engine state (link, task, channels, health)", _size(engine), peers),
            _memory_row(
                f"A's sync-tree records ({traced.entries_written / peers:.1f} entries, in memory)",
                _size(records),
                peers,
            ),
            _memory_row("A's side in all (traced via supervisor.py)", _size(a_side), peers),
            _memory_row("all traced growth (A + others' sessions)", grown, peers),
            _memory_row("peak RSS growth, untraced run (whole process)", rss_grown, plain.peers),
        ],
    )
    breakdown = _breakdown(engine, sources)
    print_table(
        "Where A's engine state was allocated (most recent eidetica frame of each allocation)",
        ["eidetica line", "bytes/peer", "blocks/peer"],
        [
            [line, f"{size / peers:,.0f}", f"{blocks / peers:.1f}"]
            for line, size, blocks in breakdown[:BREAKDOWN_ROWS]
        ],
    )
    rest = breakdown[BREAKDOWN_ROWS:]
    if rest:
        print(f"(and {len(rest)} more lines: {sum(r[1] for r in rest) / peers:,.0f} bytes/peer)")
    print(
        f"Peak RSS (getrusage, untraced run): {plain.rss_before_kib / 1024:,.0f} MiB with the "
        f"{plain.peers:,} other nodes running, {plain.rss_after_kib / 1024:,.0f} MiB once A "
        f"had connected to all. Starting the nodes took {plain.build_seconds:.1f} s; "
        f"connecting and relating took {plain.connect_seconds:.1f} s untraced "
        f"({plain.connect_seconds / plain.peers * 1e3:.1f} ms a peer), "
        f"{traced.connect_seconds:.1f} s traced."
    )
    truncated = sum(
        1 for trace in after.traces if (trace.traceback.total_nframe or 0) > TRACE_FRAMES
    )
    if truncated:
        print(f"{truncated:,} traced stacks were deeper than {TRACE_FRAMES} frames: raise it.")
    if peers < PEERS:
        print(f"Only {peers:,} of {PEERS:,} nodes started within {BUILD_BUDGET:.0f} s.")


def main() -> None:
    sources = _read_sources()
    memory_figures = trio.run(_visibility, None, COMMITS)
    with tempfile.TemporaryDirectory(prefix="eidetica-bench-") as directory:
        sqlite_figures = trio.run(_visibility, Path(directory), COMMITS)
    print_table(
        "Commit on A -> visible on B over the sim transport (ms, from rest)",
        ["backend", "commits", "median", "p90", "p99", "max", "commit", "polls"],
        [_visibility_row("memory", memory_figures), _visibility_row("sqlite", sqlite_figures)],
    )
    # The untraced run goes first: peak RSS only ever grows.
    plain = trio.run(functools.partial(_idle_peers, PEERS, BUILD_BUDGET, traced=False))
    traced = trio.run(functools.partial(_idle_peers, plain.peers, BUILD_BUDGET, traced=True))
    _print_memory(plain, traced, sources)


if __name__ == "__main__":
    main()
