"""Run many seeded simulations: ``python -m eidetica.testing.sim --seeds 1000 --nodes 5``.

Each seed is one :class:`~eidetica.testing.Simulation` run to its end. The runner
prints a line every few seeds (seeds per minute), a summary at the end, and for every
seed that fails its reason and the one-line command that replays it. It exits 1 if
any seed failed. Python's string hashing is part of a run (set order), so the runner
sets ``PYTHONHASHSEED=0`` for itself when it is not set, and the replay command does.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from eidetica.errors import first_leaf
from eidetica.testing.kinds import Faults, Workload
from eidetica.testing.simulation import Outcome, run_seed

REPORT_EVERY = 25
"""Seeds between two progress lines."""


@dataclass
class _Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eidetica.testing.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per run (at least 2)")
    parser.add_argument("--steps", type=int, default=60, help="workload steps per run")
    parser.add_argument(
        "--faults", default="all", help="all, none, or some of: " + ", ".join(Faults.kinds())
    )
    parser.add_argument(
        "--workload",
        default="all",
        help="all, none, or some of: " + ", ".join(Workload.kinds()),
    )
    parser.add_argument("--memory", action="store_true", help="nodes in memory (no crashes)")
    return parser.parse_args(argv)


def _replay(args: argparse.Namespace, seed: int) -> str:
    memory = " --memory" if args.memory else ""
    return (
        f"PYTHONHASHSEED=0 python -m eidetica.testing.sim --start {seed} --seeds 1"
        f" --nodes {args.nodes} --steps {args.steps} --faults {args.faults}"
        f" --workload {args.workload}{memory}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    if os.environ.get("PYTHONHASHSEED") is None:  # runs must replay: fix string hashing
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "eidetica.testing.sim", *sys.argv[1:]])
    try:
        faults, workload = Faults.parse(args.faults), Workload.parse(args.workload)
    except ValueError as exc:
        print(f"eidetica.testing.sim: {exc}", file=sys.stderr)
        return 2
    logging.disable(logging.CRITICAL)  # the nodes' logs of faults are the point, not news
    summary, began = _Summary(), time.monotonic()
    for number, seed in enumerate(range(args.start, args.start + args.seeds), 1):
        try:
            summary.outcomes.append(
                run_seed(
                    seed,
                    nodes=args.nodes,
                    steps=args.steps,
                    faults=faults,
                    workload=workload,
                    sqlite=not args.memory,
                )
            )
        except Exception as exc:  # one seed's failure is reported, the rest still run
            reason = first_leaf(exc)
            summary.failures.append((seed, f"{type(reason).__name__}: {reason}"))
            print(f"seed {seed} FAILED: {type(reason).__name__}: {reason}", flush=True)
            print(f"  replay: {_replay(args, seed)}", flush=True)
        if number % REPORT_EVERY == 0 or number == args.seeds:
            minutes = (time.monotonic() - began) / 60
            print(f"{number} seeds, {number / minutes:,.0f} seeds/min", flush=True)
    _print_summary(summary, time.monotonic() - began)
    return 1 if summary.failures else 0


def _print_summary(summary: _Summary, seconds: float) -> None:
    outcomes = summary.outcomes
    runs = len(outcomes) + len(summary.failures)
    print(f"{runs} seeds in {seconds:.1f} s: {len(summary.failures)} failed")
    if outcomes:
        settle = [outcome.settle_seconds for outcome in outcomes]
        print(
            f"commits {sum(o.commits for o in outcomes):,}, crashes"
            f" {sum(o.crashes for o in outcomes):,}, faults {sum(o.faults for o in outcomes):,};"
            f" settled after healing in {statistics.median(settle):.0f} s median,"
            f" {max(settle):.0f} s at most (simulated)"
        )


if __name__ == "__main__":
    sys.exit(main())
