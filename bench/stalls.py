"""Event-loop stalls: the longest time one trio task step kept the loop to itself.

Trio runs one task at a time, each until its next checkpoint; while a step runs no
other task of the process does (no other peer is answered, no timer fires), so the
longest step is the longest the loop was blocked. A :class:`trio.abc.Instrument`
reads ``time.perf_counter`` in ``before_task_step`` and ``after_task_step`` and keeps
every step's duration (the p99 is of those) and the longest, with its task's name.
The instrument is added just before the timed work and removed just after, so it
counts every task of the process in that time, set-up excluded.

*Pull.* Node A (in memory) holds a tree of :data:`ENTRIES` entries, built with the
pattern of :func:`tests.builders.build_entries` and imported :data:`BATCH` at a
time, then ``grant("*", "read")``, as in ``bench.transports``. A fresh node B on
SQLite (in a temporary directory), so its storage's pauses count, connects to A over
the sim transport and relates the tree; the steps counted are those of ``await
b_sync.sync_with_peer(peer_a)``. Both nodes run in the process, so a step may be A's
(serving a page) or B's (verifying and storing one): the task's name says which.

*Commits.* :data:`COMMITS` local commits on a SQLite node with no sync engine, one
document write each (as ``bench.commits``); each commit's signing, verifying and
storing falls in one step, after the tree's lock is taken.

Real time (``time.perf_counter``); long timer periods (``QUIET``) keep periodic syncs
out of the pull.
"""

from __future__ import annotations

import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

import eidetica
from bench._table import print_table
from bench.transports import QUIET, filled
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.protocol.keys import SigningKey
from tests.builders import build_entries

ENTRIES = 100_000
"""Entries of the tree B pulls, the root included (A's grant makes one more)."""
COMMITS = 2_000
SYNC_WITHIN = 600.0
"""Seconds the pull may take before the benchmark gives up."""


class TimedSteps(trio.abc.Instrument):
    """Times every task step (real time) and hands each to :meth:`took`."""

    def __init__(self) -> None:
        self._began: float | None = None
        """When the step running now began; None in the step that added us."""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._began is not None:
            self.took(task, time.perf_counter() - self._began)

    def took(self, task: trio.lowlevel.Task, seconds: float) -> None:
        """One step of ``task`` took ``seconds``."""
        raise NotImplementedError


class _Steps(TimedSteps):
    """Every task step's duration in seconds, and the longest step's task."""

    def __init__(self) -> None:
        super().__init__()
        self.durations = array("d")
        self.longest = 0.0
        self.longest_task = ""

    def took(self, task: trio.lowlevel.Task, seconds: float) -> None:
        self.durations.append(seconds)
        if seconds > self.longest:
            self.longest = seconds
            self.longest_task = task.name


@dataclass
class _Stalls:
    """What the instrument saw during one piece of work."""

    seconds: float
    """Wall time of the work."""
    steps: int
    longest: float
    longest_task: str
    p99: float
    busy: float
    """Seconds spent in task steps, in all."""


def _stalls(steps: _Steps, seconds: float) -> _Stalls:
    ordered = sorted(steps.durations)
    return _Stalls(
        seconds=seconds,
        steps=len(ordered),
        longest=steps.longest,
        longest_task=steps.longest_task,
        p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        busy=sum(ordered),
    )


async def _pull(key: SigningKey, raw: Sequence[bytes], directory: Path) -> tuple[_Stalls, int]:
    """Fill A with ``raw`` (untimed); a fresh SQLite node B pulls it over sim. The
    steps during the pull, and the entries B holds after it."""
    network = SimNetwork()
    a, root_id = await filled(key, raw)
    try:
        async with (
            open_sync(a, network=network, name="a", config=QUIET) as a_sync,
            eidetica.open_instance(directory / "b") as b,
            open_sync(b, network=network, name="b", config=QUIET) as b_sync,
        ):
            peer_a = await b_sync.connect(await a_sync.start_server("sim://a"))
            await b_sync.add_tree_sync(peer_a, root_id)
            await trio.testing.wait_all_tasks_blocked()
            steps = _Steps()
            trio.lowlevel.add_instrument(steps)
            began = time.perf_counter()
            try:
                with trio.fail_after(SYNC_WITHIN):
                    await b_sync.sync_with_peer(peer_a)
            finally:
                trio.lowlevel.remove_instrument(steps)
            seconds = time.perf_counter() - began
            held = len(await (await b.open_tree(root_id)).entries())
            return _stalls(steps, seconds), held
    finally:
        a.close()


async def _commits(directory: Path, count: int) -> _Stalls:
    """The steps during ``count`` commits, one document write each, on SQLite."""
    async with eidetica.open_instance(directory / "commits") as instance:
        tree = await instance.create_tree("bench")
        steps = _Steps()
        trio.lowlevel.add_instrument(steps)
        began = time.perf_counter()
        try:
            for i in range(count):
                async with tree.transaction() as op:
                    op.doc("d").set(f"k{i}", i)
        finally:
            trio.lowlevel.remove_instrument(steps)
        return _stalls(steps, time.perf_counter() - began)


def _run(entries: int, commits: int) -> tuple[_Stalls, int, _Stalls]:
    key = SigningKey.generate()
    raw = [entry.raw for entry in build_entries(entries, key)]
    with tempfile.TemporaryDirectory(prefix="eidetica-bench-") as directory:
        pull, held = trio.run(_pull, key, raw, Path(directory))
        if held != entries + 1:  # the built entries and A's grant
            raise RuntimeError(f"B holds {held:,} entries, not {entries + 1:,}")
        local = trio.run(_commits, Path(directory), commits)
    return pull, held, local


def measure(entries: int = ENTRIES, commits: int = COMMITS) -> dict[str, float]:
    """The longest task step and the p99 step (ms) during a pull of ``entries``
    entries into a fresh SQLite node, and during ``commits`` local SQLite commits."""
    pull, held, local = _run(entries, commits)
    return _figures(pull, held, local, commits)


def _figures(pull: _Stalls, held: int, local: _Stalls, commits: int) -> dict[str, float]:
    return {
        "pull_entries": float(held),
        "pull_seconds": pull.seconds,
        "pull_steps": float(pull.steps),
        "pull_longest_stall_ms": pull.longest * 1e3,
        "pull_p99_step_ms": pull.p99 * 1e3,
        "commits": float(commits),
        "commits_seconds": local.seconds,
        "commits_steps": float(local.steps),
        "commits_longest_stall_ms": local.longest * 1e3,
        "commits_p99_step_ms": local.p99 * 1e3,
    }


def main() -> None:
    pull, held, local = _run(ENTRIES, COMMITS)

    def row(label: str, stalls: _Stalls) -> list[str]:
        return [
            label,
            f"{stalls.seconds:.2f}",
            f"{stalls.steps:,}",
            f"{stalls.busy / stalls.seconds:.0%}",
            f"{stalls.p99 * 1e3:.3f}",
            f"{stalls.longest * 1e3:.2f}",
            stalls.longest_task,
        ]

    print_table(
        "Longest event-loop stall (one task step, ms)",
        ["work", "seconds", "steps", "in steps", "p99 step", "longest", "longest step's task"],
        [
            row(f"pull of {held:,} entries into SQLite", pull),
            row(f"{COMMITS:,} commits to SQLite", local),
        ],
    )


if __name__ == "__main__":
    main()
