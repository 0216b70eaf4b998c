"""Storing many entries at once: the path a sync takes when a peer sends a big tree.

The entries (:func:`tests.builders.build_entries`: a chain with a short
fork-and-merge every 100 entries, each writing one key of document ``d``) are built
and verified once, outside the timing. Two figures are then timed, each into a fresh SQLite file:

- ``SqliteBackend.put`` of the verified records, :data:`BATCH` at a time: the cost
  of the storage layer alone;
- ``Instance.import_entries`` of the raw bytes, :data:`BATCH` at a time: what a sync
  pays, with decoding, signature checks and verification against the tree.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import trio

import eidetica
from bench._table import print_table
from eidetica.storage.backend import Record
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.settings import SettingsIndex
from eidetica.storage.sqlite import SqliteBackend
from eidetica.storage.verify import BatchVerifier
from tests.builders import build_entries

ENTRIES = 100_000
BATCH = 1_000
STORE = "d"

T = TypeVar("T")


def _batches(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[start : start + BATCH] for start in range(0, len(items), BATCH)]


def _time_put(path: Path, records: Sequence[Record]) -> float:
    backend = SqliteBackend(path)
    try:
        start = time.perf_counter()
        stored = sum(len(backend.put(batch)) for batch in _batches(records))
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    _check_count("SqliteBackend.put", stored, len(records))
    return seconds


async def _time_import(directory: Path, raw: Sequence[bytes]) -> float:
    async with eidetica.open_instance(directory) as instance:
        start = time.perf_counter()
        stored = 0
        for batch in _batches(raw):
            stored += len(await instance.import_entries(batch))
        seconds = time.perf_counter() - start
    _check_count("Instance.import_entries", stored, len(raw))
    return seconds


def _check_count(step: str, stored: int, expected: int) -> None:
    if stored != expected:
        raise RuntimeError(f"{step} stored {stored:,} entries, expected {expected:,}")


def main() -> None:
    start = time.perf_counter()
    entries = build_entries(ENTRIES)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    records = BatchVerifier(MemoryBackend(), SettingsIndex()).verify(entries)
    verify_seconds = time.perf_counter() - start
    raw = [entry.raw for entry in entries]
    with tempfile.TemporaryDirectory(prefix="eidetica-bench-") as directory:
        put_seconds = _time_put(Path(directory) / "put.db", records)
        import_seconds = trio.run(_time_import, Path(directory) / "import", raw)

    def row(label: str, seconds: float) -> list[str]:
        return [
            label,
            f"{seconds:.2f}",
            f"{ENTRIES / seconds:,.0f}",
            f"{seconds / ENTRIES * 1e6:.1f}",
        ]

    mean_bytes = sum(len(item) for item in raw) / len(raw)
    print_table(
        f"{ENTRIES:,} entries (mean {mean_bytes:.0f} B), batches of {BATCH:,}",
        ["step", "seconds", "entries/s", "µs/entry"],
        [
            row("setup: build with create_entry", build_seconds),
            row("setup: verify with BatchVerifier", verify_seconds),
            row("SqliteBackend.put", put_seconds),
            row("Instance.import_entries (raw bytes)", import_seconds),
        ],
    )


if __name__ == "__main__":
    main()
