"""Run every benchmark in turn (``python -m bench``) or one of them (``python -m bench NAME``);
``python -m bench compare`` prints one table of them all (:mod:`bench.compare`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bench import (
    bulk_store,
    commits,
    compare,
    doc_read,
    engine,
    events,
    fanout,
    handshake,
    hash_choice,
    hostile,
    incremental,
    latency,
    limit,
    peer,
    reconcile,
    revocation,
    stalls,
    sync_tree,
    transports,
)

BENCHMARKS: dict[str, Callable[[], None]] = {
    "commits": commits.main,
    "doc_read": doc_read.main,
    "bulk_store": bulk_store.main,
    "hash_choice": hash_choice.main,
    "handshake": handshake.main,
    "reconcile": reconcile.main,
    "engine": engine.main,
    "transports": transports.main,
    "hostile": hostile.main,
    "revocation": revocation.main,
    "sync_tree": sync_tree.main,
    "latency": latency.main,
    "events": events.main,
    "limit": limit.main,
    "peer": peer.main,
    "incremental": incremental.main,
    "fanout": fanout.main,
    "stalls": stalls.main,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:  # one table of everything, with options of its own
        compare.main(argv[1:])
        return 0
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    start = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        print(f"=== {name} ===")
        BENCHMARKS[name]()
        print(f"({name} took {time.perf_counter() - began:.1f} s)\n")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
