"""This machine's limit for taking in entries: the unavoidable work, done directly.

What a node must do with each entry a peer sends, at the least: decode its bytes,
hash them (the id), check its signature, and insert it, in batches of
:data:`BATCH`, into a fresh backend of the kind the receiving node has: in memory, as
in the initial syncs ``bench compare`` sets beside it (``SQLite`` is the other
choice). No engine, no tree checks, no messages. The entries are those of the
initial sync (:func:`tests.builders.build_entries`).

- *One core*: all of it in this process, one batch after the other.
- *Both cores*: the checks (decode, hash, signature: ``validate_entry``) run in
  worker processes, one per core, a batch at a time; this process decodes each
  checked batch again (without a signature check) and inserts it while the workers
  check the next ones. Inserts stay in one process, as SQLite has one writer.

The figure is entries per second; ``bench compare`` divides the engine's by it.

Beside it, ``python -m bench limit`` prints the same work with only the heads of each
author's run signature-checked (:func:`eidetica.protocol.intake.check`, which
authenticates the rest through the hash chain): what a node needs at the least for
one author's entries, in memory. ``bench compare`` keeps dividing by the full limit.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench._table import print_table
from eidetica.protocol.entry import Entry, load_entry, validate_entry
from eidetica.protocol.intake import check
from eidetica.storage.backend import Backend, Record
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.sqlite import SqliteBackend
from tests.builders import build_entries

BATCH = 1_000
ENTRIES = 100_000


def _check(batch: Sequence[bytes]) -> int:
    """Decode, hash and check the signature of each entry; how many passed."""
    return sum(1 for raw in batch if validate_entry(raw) is not None)


def _check_heads(tree: str, batch: Sequence[bytes]) -> int:
    """Decode and hash each entry, check the signatures of the batch's heads only; how
    many passed."""
    valid, _ = check(tree, batch)
    return len(valid)


def _checked(tree: str, batch: Sequence[bytes], heads: bool) -> list[Entry]:
    if heads:
        valid, rejected = check(tree, batch)
        if rejected:
            raise RuntimeError(f"an entry failed its checks: {rejected[0].reason}")
        return valid
    return [validate_entry(item) for item in batch]


def _backend(directory: Path | None, name: str) -> Backend:
    return MemoryBackend() if directory is None else SqliteBackend(directory / name)


def _insert(backend: Backend, batch: Sequence[bytes], root: str) -> None:
    backend.put([Record(load_entry(raw), (root,)) for raw in batch])


def _batches(raw: Sequence[bytes]) -> list[Sequence[bytes]]:
    return [raw[start : start + BATCH] for start in range(0, len(raw), BATCH)]


def one_core(raw: Sequence[bytes], directory: Path | None, *, heads: bool = False) -> float:
    """Entries per second, everything in this process (SQLite in ``directory``, or
    in memory); checking only the heads' signatures if ``heads``."""
    root = validate_entry(raw[0]).id
    backend = _backend(directory, "one.db")
    try:
        began = time.perf_counter()
        for batch in _batches(raw):
            entries = _checked(root, batch, heads)
            backend.put([Record(entry, (root,)) for entry in entries])
        return len(raw) / (time.perf_counter() - began)
    finally:
        backend.close()


def every_core(
    raw: Sequence[bytes],
    directory: Path | None,
    workers: int | None = None,
    *,
    heads: bool = False,
) -> float:
    """Entries per second, the checks in one worker process per core; checking only
    the heads' signatures if ``heads``."""
    root = validate_entry(raw[0]).id
    backend = _backend(directory, "all.db")
    checker = functools.partial(_check_heads, root) if heads else _check
    try:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            pool.submit(checker, raw[:1]).result()  # workers started outside the timing
            began = time.perf_counter()
            batches = _batches(raw)
            for batch, passed in zip(batches, pool.map(checker, batches), strict=True):
                if passed != len(batch):
                    raise RuntimeError("an entry failed its checks")
                _insert(backend, batch, root)
            return len(raw) / (time.perf_counter() - began)
    finally:
        backend.close()


def measure(raw: Sequence[bytes], *, sqlite: bool = False, heads: bool = False) -> dict[str, float]:
    """Both limits for ``raw`` (a tree's entries, parents first), inserting in memory
    or into SQLite; checking only the heads' signatures if ``heads``."""
    with tempfile.TemporaryDirectory(prefix="eidetica-limit-") as directory:
        where = Path(directory) if sqlite else None
        return {
            "one_core_per_s": one_core(raw, where, heads=heads),
            "every_core_per_s": every_core(raw, where, heads=heads),
            "cores": float(os.cpu_count() or 1),
        }


def main() -> None:
    raw = [entry.raw for entry in build_entries(ENTRIES)]
    rows = []
    for sqlite, heads in ((False, False), (True, False), (False, True)):
        figures = measure(raw, sqlite=sqlite, heads=heads)
        into = ("SQLite" if sqlite else "memory") + (", checking heads only" if heads else "")
        rows += [
            [f"one core, into {into}", f"{figures['one_core_per_s']:,.0f}"],
            [f"{figures['cores']:.0f} cores, into {into}", f"{figures['every_core_per_s']:,.0f}"],
        ]
    print_table(
        f"The limit: decode, hash, check and insert {ENTRIES:,} entries",
        ["where", "entries/s"],
        rows,
    )


if __name__ == "__main__":
    main()
