"""Local commits per second: one small document write per transaction.

Every commit signs an entry, verifies it against the tree, stores it (one SQLite
transaction each) and runs the commit hooks, so this is the rate a single writer can
sustain. The target is 5,000 commits/s to SQLite. The in-memory backend shows how much
of that cost is the library itself rather than SQLite. The rate over the last
:data:`WINDOW` commits shows whether a commit gets dearer as the tree grows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import trio

import eidetica
from bench._table import print_table

COMMITS = 10_000
WINDOW = 1_000
TARGET_PER_SECOND = 5_000


async def commit_times(path: Path | None, count: int) -> list[float]:
    """The ``perf_counter`` time at the start and after each of ``count`` commits."""
    async with eidetica.open_instance(path) as instance:
        tree = await instance.create_tree("bench")
        times = [time.perf_counter()]
        for i in range(count):
            async with tree.transaction() as op:
                op.doc("d").set(f"k{i}", i)
            times.append(time.perf_counter())
    return times


def _row(label: str, times: list[float]) -> list[str]:
    total = times[-1] - times[0]
    last_window = times[-1] - times[-1 - WINDOW]
    count = len(times) - 1
    return [
        label,
        f"{count:,}",
        f"{total:.2f}",
        f"{count / total:,.0f}",
        f"{WINDOW / last_window:,.0f}",
        f"{total / count * 1e6:.0f}",
    ]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="eidetica-bench-") as directory:
        sqlite_times = trio.run(commit_times, Path(directory), COMMITS)
    memory_times = trio.run(commit_times, None, COMMITS)
    print_table(
        f"Local commits, one doc write each (target >= {TARGET_PER_SECOND:,}/s to SQLite)",
        ["backend", "commits", "seconds", "commits/s", f"last {WINDOW:,}/s", "µs/commit"],
        [_row("sqlite", sqlite_times), _row("memory", memory_times)],
    )
    rate = COMMITS / (sqlite_times[-1] - sqlite_times[0])
    verdict = "meets" if rate >= TARGET_PER_SECOND else "MISSES"
    print(f"SQLite {verdict} the target of {TARGET_PER_SECOND:,} commits/s.")


if __name__ == "__main__":
    main()
