"""Commit -> visible between a listener and a node that only dials it: HTTP against
WebSocket, both ways.

Over WebSocket the listener pushes a commit back over the link its peer opened; over
HTTP it cannot, and the dialler hears of it through its watch (a long poll,
``eidetica/actors/watch.py``) and then syncs the tree. This benchmark shows what that
costs against the push.

Two fresh in-memory nodes per transport: A listens on 127.0.0.1 (port 0), B dials it
and listens nowhere. A's tree lets B write; B relates it and syncs once, all outside
the timing. Then :data:`COMMITS` commits on A, one at a time: the time from just
before the commit until B's document shows the value (A -> B); then as many on B,
until A shows them (B -> A: a push over either transport). Each wait wakes on
``Instance.changed`` with the version read before the commit, so nothing is polled;
after each commit the bench waits for both nodes to fall idle, so each figure starts
from rest. Timers are set far out (no periodic sync, no connection check), so what
arrives was pushed, or fetched because of a watch.

Real time throughout (``time.perf_counter``). The figures: median, p99 and max per
transport and direction, and the ratio of HTTP's to WebSocket's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

import eidetica
from bench._table import print_table
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync

COMMITS = 200
"""Commits timed per transport and direction."""
VISIBLE_WITHIN = 10.0
"""Seconds a commit may take to show on the other node before the benchmark gives up."""
LISTEN = {"http": "http://127.0.0.1:0", "ws": "ws://127.0.0.1:0"}
QUIET = SyncConfig(periodic_sync=86_400.0, connection_check=86_400.0, retry_sweep=86_400.0)
DIRECTIONS = ("A -> B", "B -> A")


@asynccontextmanager
async def _pair(
    scheme: str, directory: Path | None
) -> AsyncIterator[tuple[eidetica.Tree, eidetica.Tree]]:
    """A's tree and B's copy of it, B having dialled A over ``scheme``; both nodes
    in memory, or on SQLite in ``directory``."""
    async with (
        eidetica.open_instance(None if directory is None else directory / "a") as a,
        eidetica.open_instance(None if directory is None else directory / "b") as b,
        open_sync(a, config=QUIET) as a_sync,
        open_sync(b, config=QUIET) as b_sync,
    ):
        tree = await a.create_tree("bench")
        await tree.grant(b.public_key, "write")
        peer_a = await b_sync.connect(await a_sync.start_server(LISTEN[scheme]))
        await b_sync.add_tree_sync(peer_a, tree.root_id)
        await b_sync.sync_with_peer(peer_a)
        yield tree, await b.open_tree(tree.root_id)


async def _visible(writer: eidetica.Tree, reader: eidetica.Tree, index: int) -> float:
    """Seconds from just before a commit of ``index`` on ``writer`` until ``reader``
    shows it."""
    since = reader.instance.version
    began = time.perf_counter()
    async with writer.transaction() as op:
        op.doc("d").set("n", index)
    with trio.fail_after(VISIBLE_WITHIN):
        while (await reader.doc("d")).get("n") != index:
            since = await reader.instance.changed(since)
    return time.perf_counter() - began


async def latencies(
    scheme: str, count: int, directory: Path | None = None
) -> dict[str, list[float]]:
    """Per direction, the seconds each of ``count`` commits took to show (nodes on
    SQLite in ``directory``, if given)."""
    figures: dict[str, list[float]] = {direction: [] for direction in DIRECTIONS}
    async with _pair(scheme, directory) as (on_a, on_b):
        await trio.testing.wait_all_tasks_blocked()
        for index in range(count):
            figures["A -> B"].append(await _visible(on_a, on_b, index))
            await trio.testing.wait_all_tasks_blocked()
        for index in range(count, 2 * count):
            figures["B -> A"].append(await _visible(on_b, on_a, index))
            await trio.testing.wait_all_tasks_blocked()
    return figures


async def _all(count: int) -> dict[str, dict[str, list[float]]]:
    return {scheme: await latencies(scheme, count) for scheme in LISTEN}


def p99(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=100, method="inclusive")[98]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    figures = trio.run(_all, COMMITS)
    rows = []
    for direction in DIRECTIONS:
        for scheme in LISTEN:
            seconds = figures[scheme][direction]
            rows.append(
                [
                    f"{scheme} {direction}",
                    f"{len(seconds):,}",
                    _ms(statistics.median(seconds)),
                    _ms(p99(seconds)),
                    _ms(max(seconds)),
                ]
            )
        http, ws = figures["http"][direction], figures["ws"][direction]
        rows.append(
            [
                f"http/ws {direction}",
                "",
                f"{statistics.median(http) / statistics.median(ws):.2f}x",
                f"{p99(http) / p99(ws):.2f}x",
                f"{max(http) / max(ws):.2f}x",
            ]
        )
    print_table(
        "Commit -> visible, B only dials A (ms, from rest, in-memory nodes)",
        ["transport, direction", "commits", "median", "p99", "max"],
        rows,
    )


if __name__ == "__main__":
    main()
