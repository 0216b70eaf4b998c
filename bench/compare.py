"""``python -m bench compare``: issue 14's figures in one sitting, beside the limit
and the peer.

One process tree, one sitting, one measurement after the other (nothing else should
run on the machine meanwhile):

- the **limit**: decode, hash, check and insert the same entries directly, on one
  core and on every core (:mod:`bench.limit`);
- **initial sync** over sim, HTTP and WebSocket, of 10,000 and 100,000 entries,
  written by one author and by 16 (:func:`bench.transports.initial_syncs`);
- **incremental syncs** of d = 1, 100 and 10,000 new entries in a 100,000-entry tree:
  round trips and bytes on the wire (:mod:`bench.incremental`);
- **commit -> visible** between SQLite nodes over WebSocket and HTTP
  (:func:`bench.latency.latencies`);
- **local commits** per second on SQLite, from one writer and from many at once;
- **document reads**, warm and cold (a reopened node), after 100,000 commits;
- **fan-out** of one commit to 100 and 1,000 linked peers (:mod:`bench.fanout`), and
  what the hub holds per idle linked peer (:func:`bench.engine.hub_bytes_per_peer`);
- the **longest event-loop stall** during a pull and during commits
  (:mod:`bench.stalls`);
- the **peer**, pycrdt + pycrdt-websocket, replicating the same number of writes to a
  fresh replica, and its write -> visible latency (:mod:`bench.peer`).

It prints one table, each figure with its ratio to the limit (throughputs) or to the
peer, and the issue's target beside it; and writes the rows as JSON (``--json``).
``--quick`` runs small sizes only, to try the harness. ``docs/performance.md`` keeps
the last full table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

import eidetica
from bench import (
    commits,
    doc_read,
    engine,
    fanout,
    incremental,
    latency,
    limit,
    peer,
    stalls,
    transports,
)
from bench._table import print_table
from eidetica.protocol.keys import SigningKey
from tests.builders import build_entries, build_entries_by_many


@dataclass
class Row:
    """One figure of the table."""

    section: str
    figure: str
    value: float
    unit: str
    vs_limit: float | None = None
    """The figure over the machine's limit (both cores), for throughputs."""
    vs_peer: float | None = None
    """The figure over the peer's same figure (for times: the peer's over ours)."""
    target: str = ""
    met: bool | None = None


@dataclass
class Sizes:
    initial: Sequence[int]
    incremental_tree: int
    deltas: Sequence[int]
    visible: int
    commits: int
    writers: int
    reads_after: int
    fanout: Sequence[int]
    peer: Sequence[int]


FULL = Sizes(
    (10_000, 100_000),
    100_000,
    (1, 100, 10_000),
    200,
    10_000,
    8,
    100_000,
    (100, 1_000),
    (10_000, 100_000),
)
QUICK = Sizes((2_000,), 5_000, (1, 100), 30, 1_000, 4, 2_000, (20,), (2_000,))


@dataclass
class Context:
    """What later sections compare against: the limit and the peer."""

    limit_per_s: float = 0.0
    peer_per_s: dict[int, float] | None = None
    peer_visible_ms: tuple[float, float] | None = None


def _ratio(value: float, other: float | None) -> float | None:
    return None if not other else value / other


def _entries(size: int, authors: int) -> tuple[SigningKey, list[bytes]]:
    owner = SigningKey.generate()
    if authors == 1:
        built = build_entries(size, owner)
    else:
        built = build_entries_by_many(size, authors, owner)
    return owner, [entry.raw for entry in built]


def limit_rows(sizes: Sizes, context: Context) -> list[Row]:
    _, raw = _entries(max(sizes.initial), 1)
    figures = limit.measure(raw)
    context.limit_per_s = figures["every_core_per_s"]
    cores = f"{figures['cores']:.0f} cores"
    return [
        Row(
            "limit",
            "decode+hash+check+insert in memory, one core",
            figures["one_core_per_s"],
            "entries/s",
            _ratio(figures["one_core_per_s"], context.limit_per_s),
        ),
        Row(
            "limit",
            f"decode+hash+check+insert in memory, {cores}",
            context.limit_per_s,
            "entries/s",
            1.0,
        ),
    ]


def peer_rows(sizes: Sizes, context: Context) -> list[Row]:
    """The peer first: later sections divide by its figures."""
    rows, context.peer_per_s = [], {}
    for writes in sizes.peer:
        figures = peer.measure(writes, sizes.visible)
        context.peer_per_s[writes] = figures["replicate_writes_per_s"]
        rows.append(
            Row(
                "peer",
                f"pycrdt-websocket, {writes:,} writes to a fresh replica",
                figures["replicate_writes_per_s"],
                "writes/s",
                _ratio(figures["replicate_writes_per_s"], context.limit_per_s),
            )
        )
    both = [figures["visible_p50_ms"], figures["visible_back_p50_ms"]]
    tails = [figures["visible_p99_ms"], figures["visible_back_p99_ms"]]
    context.peer_visible_ms = (statistics.mean(both), max(tails))
    rows.append(Row("peer", "write -> visible, p50", context.peer_visible_ms[0], "ms"))
    rows.append(Row("peer", "write -> visible, p99", context.peer_visible_ms[1], "ms"))
    return rows


def initial_rows(sizes: Sizes, context: Context) -> list[Row]:
    rows = []
    for authors in (16, 1):
        for size in sizes.initial:
            key, raw = _entries(size, authors)
            results = trio.run(transports.initial_syncs, key, raw)
            for scheme, result in results.items():
                rate = result.entries / result.seconds
                rows.append(_initial_row(authors, size, scheme, rate, context))
    return rows


def _initial_row(authors: int, size: int, scheme: str, rate: float, context: Context) -> Row:
    peer = (context.peer_per_s or {}).get(size)
    vs_limit = _ratio(rate, context.limit_per_s)
    who = "one author" if authors == 1 else f"{authors} authors"
    if authors == 1:
        target, met = (
            ">= 30,000/s, within 12x of the peer",
            rate >= 30_000 and (peer is None or rate * 12 >= peer),
        )
    else:
        target, met = ">= 70% of the limit", vs_limit is not None and vs_limit >= 0.7
    return Row(
        "initial sync",
        f"{size:,} entries, {who}, {scheme}",
        rate,
        "entries/s",
        vs_limit,
        _ratio(rate, peer),
        target,
        met,
    )


def incremental_rows(sizes: Sizes, context: Context) -> list[Row]:
    rows = []
    for figures in incremental.measure(sizes.incremental_tree, sizes.deltas):
        d, trips, wire = int(figures["d"]), figures["round_trips"], figures["bytes_on_wire"]
        where = f"d = {d:,} in {sizes.incremental_tree:,}"
        rows += [
            Row("incremental", f"{where}: round trips", trips, "", target="<= 2", met=trips <= 2),
            Row(
                "incremental",
                f"{where}: wire / new bytes",
                figures["ratio"],
                "x",
                target=f"<= {figures['limit_bytes']:,.0f} B",
                met=wire <= figures["limit_bytes"],
            ),
        ]
    return rows


def visible_rows(sizes: Sizes, context: Context) -> list[Row]:
    rows = []
    for scheme in ("ws", "http"):
        with tempfile.TemporaryDirectory(prefix="eidetica-compare-") as directory:
            figures = trio.run(latency.latencies, scheme, sizes.visible, Path(directory))
        seconds = figures["A -> B"] + figures["B -> A"]
        p50, p99 = statistics.median(seconds) * 1e3, latency.p99(seconds) * 1e3
        peer = context.peer_visible_ms or (None, None)
        for name, ms, peer_ms, bound in (("p50", p50, peer[0], 1.0), ("p99", p99, peer[1], 2.0)):
            ws = scheme == "ws"  # the targets are for WebSocket
            rows.append(
                Row(
                    "commit -> visible",
                    f"SQLite nodes, {scheme}, {name}",
                    ms,
                    "ms",
                    vs_peer=_ratio(peer_ms, ms) if peer_ms else None,
                    target=f"<= {bound:g} ms" if ws else "",
                    met=ms <= bound if ws else None,
                )
            )
    return rows


async def _concurrent_commits(directory: Path, writers: int, each: int) -> float:
    """Commits per second from ``writers`` tasks committing at once to one SQLite node."""
    async with eidetica.open_instance(directory) as instance:
        tree = await instance.create_tree("bench")

        async def write(writer: int) -> None:
            for i in range(each):
                async with tree.transaction() as op:
                    op.doc("d").set(f"w{writer}-{i}", i)

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for writer in range(writers):
                nursery.start_soon(write, writer)
        return writers * each / (time.perf_counter() - began)


def commit_rows(sizes: Sizes, context: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="eidetica-compare-") as directory:
        times = trio.run(commits.commit_times, Path(directory) / "one", sizes.commits)
        concurrent = trio.run(
            _concurrent_commits,
            Path(directory) / "many",
            sizes.writers,
            sizes.commits // sizes.writers,
        )
    one = sizes.commits / (times[-1] - times[0])
    return [
        Row(
            "local commits",
            "one writer, SQLite",
            one,
            "commits/s",
            target=">= 5,000/s",
            met=one >= 5_000,
        ),
        Row(
            "local commits",
            f"{sizes.writers} writers at once, SQLite",
            concurrent,
            "commits/s",
            target=">= 15,000/s",
            met=concurrent >= 15_000,
        ),
    ]


def read_rows(sizes: Sizes, context: Context) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="eidetica-compare-") as directory:
        results = trio.run(doc_read.measure, Path(directory), sizes.reads_after)
    cold = statistics.median(results["cold (reopened instance)"])
    warm = statistics.median(results["cached"])
    after = f"after {sizes.reads_after:,} commits"
    return [
        Row(
            "document read",
            f"cold (reopened), {after}",
            cold,
            "ms",
            target="< 10 ms",
            met=cold < 10.0,
        ),
        Row("document read", f"warm, {after}", warm, "ms"),
    ]


def fanout_rows(sizes: Sizes, context: Context) -> list[Row]:
    rows = []
    for peers in sizes.fanout:
        figures = fanout.measure(peers)
        n = int(figures["peers"])
        rows.append(
            Row(
                "fan-out",
                f"one commit held by all {n:,} peers",
                figures["visible_all_ms"],
                "ms",
                target="<= 250 ms" if n >= 1_000 else "",
                met=figures["visible_all_ms"] <= 250 if n >= 1_000 else None,
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"the same: the hub's own task steps in that time, {n:,} peers",
                figures["hub_ms"],
                "ms",
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"the same: the peers' task steps in that time, {n:,} peers",
                figures["peers_ms"],
                "ms",
            )
        )
        idle = figures.get("bytes_per_idle_peer")
        if idle is not None and idle > 0:  # RSS growth: after big sections, memory is reused
            rows.append(
                Row(
                    "fan-out",
                    f"RSS per idle peer node in the same process, {n:,} peers",
                    idle / 1024,
                    "KiB",
                )
            )
    # Traced allocation is slow (about 0.3 s a peer), so the smaller run is traced.
    n, state, with_records = engine.hub_bytes_per_peer(min(sizes.fanout))
    for what, size in (("engine state", state), ("with its sync-tree records", with_records)):
        rows.append(
            Row(
                "fan-out",
                f"the hub's memory per idle linked peer, {what}, {n:,} peers",
                size / 1024,
                "KiB",
                target="<= 20 KB",
                met=size <= 20_000,
            )
        )
    return rows


def stall_rows(sizes: Sizes, context: Context) -> list[Row]:
    figures = stalls.measure(max(sizes.initial), sizes.commits // 5)
    pull, commit = figures["pull_longest_stall_ms"], figures["commits_longest_stall_ms"]
    return [
        Row(
            "loop stall",
            f"longest, pull of {int(figures['pull_entries']):,} entries to SQLite",
            pull,
            "ms",
            target="<= 2 ms",
            met=pull <= 2.0,
        ),
        Row(
            "loop stall",
            f"longest, {int(figures['commits']):,} commits to SQLite",
            commit,
            "ms",
            target="<= 2 ms",
            met=commit <= 2.0,
        ),
    ]


Section = Callable[[Sizes, Context], list[Row]]

SECTIONS: list[tuple[str, Section]] = [
    ("limit", limit_rows),
    ("peer", peer_rows),
    ("initial", initial_rows),
    ("incremental", incremental_rows),
    ("visible", visible_rows),
    ("commits", commit_rows),
    ("reads", read_rows),
    ("fanout", fanout_rows),
    ("stalls", stall_rows),
]


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def print_rows(rows: Sequence[Row]) -> None:
    print_table(
        "bench compare",
        ["figure", "value", "unit", "vs limit", "vs peer", "target", "met"],
        [
            [
                f"{row.section}: {row.figure}",
                _cell(row.value, 2 if row.value < 100 else 0),
                row.unit,
                _cell(row.vs_limit),
                _cell(row.vs_peer),
                row.target,
                "" if row.met is None else ("yes" if row.met else "NO"),
            ]
            for row in rows
        ],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the harness")
    parser.add_argument("--json", type=Path, default=Path("compare.json"), help="where to write")
    parser.add_argument("--only", nargs="*", help="run these sections only")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # links closing as nodes stop: expected, not news
    sizes, context, rows = (QUICK if args.quick else FULL), Context(), []
    for name, section in SECTIONS:
        if args.only and name not in args.only:
            continue
        began = time.perf_counter()
        rows += section(sizes, context)
        print(f"{name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    print_rows(rows)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "quick": args.quick}
    args.json.write_text(
        json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    print(f"\nwrote {args.json}")
