"""Fan-out: how long one commit on a hub takes to show on every one of N linked peers.

One hub node (in memory, serving at ``sim://hub``) holds a small tree that anyone may
read. For each N of :data:`PEERS`, N peer nodes start in the same trio process, each
an in-memory instance with its own sync engine on the in-process sim network, the
way ``bench.engine`` starts its idle peers (one task each, under a budget of
:data:`BUILD_BUDGET` seconds; fewer than N if it runs out, and the figures say how
many). Each peer dials the hub (a peer listens nowhere: the hub pushes back over the
link the peer opened, as a server's clients would be served), relates the tree with
it and pulls it; then the hub relates the tree with every peer, and the bench waits
until every task is idle.

The timed part starts just before the hub commits one small document write and ends
when the last peer holds that entry. Every peer has a waiting task blocked on its
instance's ``tree_changed`` (started before the commit, with the tree's version read
then, so no arrival is missed), which checks the entry is stored when woken and
notes the time: no polling, no sleep. The figures are the time until the first, the
median and the last peer held it; a first close to the last means the peers were
served in turn, a step each, each waiting on nearly all the others. All the nodes
share one process and one thread, so the time until the last includes every peer's
own work of taking the entry in (verifying, storing, its hooks), not only the hub's
sending: on a real network those run on N machines at once.
There is no latency on the sim transport.

*Whose time.* To tell the hub's sending from the peers' taking in, a
:class:`trio.abc.Instrument` adds up, while the commit spreads, the time of every
task step, split by whether the task descends from one of the ``_peer`` tasks (a
peer's engine, its links and services: its verifying and storing) or is one of the
waiting tasks that note a peer's arrival, or neither (the hub, and the sim network's
delivery tasks it started). The hub's share over N is what one
more linked peer costs the hub for one commit: the figure a hub on its own machine
would see, its peers' work being done elsewhere.

*Memory per idle peer.* The process's resident set (``/proc/self/statm``, after a
garbage collection) is read before the first peer starts and again once all are
linked, synced and idle; the growth divided by N is what one idle peer costs in all:
its node (instance, engine, link, copy of the tree) and the hub's state for it.
Allocator slack makes it rough (memory freed by the N=100 run may be reused by the
next); ``bench.engine`` breaks the hub's side down with ``tracemalloc``. On a system
without ``/proc`` the figure is left out.

Real time throughout (``time.perf_counter``); long timer periods (``QUIET``) keep
periodic syncs and connection checks out of the measurement.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
import trio.testing

import eidetica
from bench._table import print_table
from bench.stalls import TimedSteps
from bench.transports import QUIET
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork

PEERS = (100, 1_000)
BUILD_BUDGET = 60.0
"""Seconds to spend starting one run's peers; fewer than asked for if it runs out."""
VISIBLE_WITHIN = 60.0
"""Seconds the commit may take to reach every peer before the benchmark gives up."""
_STATM = Path("/proc/self/statm")


def _rss_bytes() -> int | None:
    """The process's resident set now, or None where ``/proc`` is missing."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _not_inbox_full(record: logging.LogRecord) -> bool:
    """Keeps the hub's "sync inbox full" warnings out of the output: when the hub
    stops, its N links close at once and their notices overflow the inbox it no
    longer reads. Harmless there, but one line per link."""
    return not record.getMessage().startswith("sync inbox full")


@contextmanager
def _quiet_inbox() -> Iterator[None]:
    logger = logging.getLogger("eidetica.actors.supervisor")
    logger.addFilter(_not_inbox_full)
    try:
        yield
    finally:
        logger.removeFilter(_not_inbox_full)


async def _peer(
    network: SimNetwork,
    name: str,
    hub: str,
    root_id: str,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[eidetica.Instance] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One peer: dial the hub, relate the tree, pull it, then idle until ``stop``."""
    async with (
        eidetica.open_instance(None) as instance,
        open_sync(instance, network=network, name=name, config=QUIET) as sync,
    ):
        key = await sync.connect(hub)
        await sync.add_tree_sync(key, root_id)
        await sync.sync_with_peer(key)
        task_status.started(instance)
        await stop.wait()


async def _wait_held(
    instance: eidetica.Instance, root_id: str, wanted: list[str], seen: list[float]
) -> None:
    """Note the time once ``instance`` holds the entry ``wanted`` will name, waking
    only when the tree stores something. ``wanted`` is filled in right after the
    commit returns, before any checkpoint, so no peer can have stored the entry yet;
    were it otherwise, the wait would run out rather than note a wrong time."""
    since = instance.tree_version(root_id)
    while not (wanted and instance.backend.has(wanted)):
        since = await instance.tree_changed(root_id, since)
    seen.append(time.perf_counter())


class _Shares(TimedSteps):
    """Seconds of task steps, split into peers' tasks and the rest (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.peers = 0.0
        self.rest = 0.0
        self._whose: dict[trio.lowlevel.Task, bool] = {}

    def took(self, task: trio.lowlevel.Task, seconds: float) -> None:
        if self._is_peers(task):
            self.peers += seconds
        else:
            self.rest += seconds

    def _is_peers(self, task: trio.lowlevel.Task) -> bool:
        whose = self._whose.get(task)
        if whose is None:
            whose = False
            ancestor: trio.lowlevel.Task | None = task
            while ancestor is not None:
                if ancestor.name.endswith(("fanout._peer", "fanout._wait_held")):
                    whose = True
                    break
                nursery = ancestor.parent_nursery
                ancestor = None if nursery is None else nursery.parent_task
            self._whose[task] = whose
        return whose


async def _fanout(count: int, budget: float) -> dict[str, float]:
    network = SimNetwork()
    stop = trio.Event()
    # The peers' nursery is the outer block: the hub stops first, as a server would.
    async with trio.open_nursery() as nursery:
        async with (
            eidetica.open_instance(None) as hub,
            open_sync(hub, network=network, name="hub", config=QUIET) as hub_sync,
        ):
            address = await hub_sync.start_server("sim://hub")
            tree = await hub.create_tree("bench")
            await tree.grant("*", "read")
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            rss_before = _rss_bytes()
            peers: list[eidetica.Instance] = []
            started = time.perf_counter()
            while len(peers) < count and time.perf_counter() - started < budget:
                peers.append(
                    await nursery.start(
                        _peer, network, f"p{len(peers)}", address, tree.root_id, stop
                    )
                )
            for peer in peers:
                await hub_sync.add_tree_sync(peer.public_key, tree.root_id)
            await trio.testing.wait_all_tasks_blocked()
            build_seconds = time.perf_counter() - started
            gc.collect()
            rss_after = _rss_bytes()

            wanted: list[str] = []
            seen: list[float] = []
            with trio.fail_after(VISIBLE_WITHIN):
                async with trio.open_nursery() as waiting:
                    for peer in peers:
                        waiting.start_soon(_wait_held, peer, tree.root_id, wanted, seen)
                    await trio.testing.wait_all_tasks_blocked()
                    shares = _Shares()
                    trio.lowlevel.add_instrument(shares)
                    began = time.perf_counter()
                    async with tree.transaction() as op:
                        op.doc("d").set("n", 1)
                    assert op.entry is not None
                    wanted.append(op.entry.id)
                trio.lowlevel.remove_instrument(shares)
        stop.set()
    figures = {
        "peers": float(len(peers)),
        "visible_first_ms": (min(seen) - began) * 1e3,
        "visible_p50_ms": (statistics.median(seen) - began) * 1e3,
        "visible_all_ms": (max(seen) - began) * 1e3,
        "build_seconds": build_seconds,
        "hub_ms": shares.rest * 1e3,
        "peers_ms": shares.peers * 1e3,
    }
    if rss_before is not None and rss_after is not None:
        figures["bytes_per_idle_peer"] = (rss_after - rss_before) / len(peers)
    return figures


def measure(peers: int = PEERS[-1], budget: float = BUILD_BUDGET) -> dict[str, float]:
    """One run with ``peers`` peers (fewer if starting them outlasts ``budget``
    seconds): the times until the hub's commit showed on them, in ms, and the memory
    an idle peer costs. ``peers`` in the result is how many took part."""
    with _quiet_inbox():
        return trio.run(_fanout, peers, budget)


def _row(figures: dict[str, float]) -> list[str]:
    memory = figures.get("bytes_per_idle_peer")
    return [
        f"{figures['peers']:,.0f}",
        f"{figures['visible_first_ms']:.1f}",
        f"{figures['visible_p50_ms']:.1f}",
        f"{figures['visible_all_ms']:.1f}",
        f"{figures['hub_ms']:.1f}",
        f"{figures['peers_ms']:.1f}",
        "-" if memory is None else f"{memory:,.0f}",
        f"{figures['build_seconds']:.1f}",
    ]


def main() -> None:
    runs = [measure(count) for count in PEERS]
    print_table(
        "One commit on the hub -> held by every linked peer (sim, in-memory nodes, ms)",
        [
            "peers",
            "first",
            "median",
            "all",
            "hub's steps",
            "peers' steps",
            "bytes/idle peer",
            "setup s",
        ],
        [_row(figures) for figures in runs],
    )
    for asked, figures in zip(PEERS, runs, strict=True):
        if figures["peers"] < asked:
            started = f"{figures['peers']:,.0f} of {asked:,}"
            print(f"Only {started} peers started within {BUILD_BUDGET:.0f} s.")
    print(
        "All nodes share one thread: 'all' includes every peer's own work of taking the "
        "entry in, which real peers would do in parallel."
    )


if __name__ == "__main__":
    main()
