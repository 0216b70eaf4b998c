"""SHA-256 against BLAKE3 for entry ids, over entries of realistic sizes.

An entry's id is the hash of its canonical bytes, so every entry a node makes,
receives or loads is hashed at least once. This measures what each hash costs per
entry, from a root entry up to the largest entry allowed (:data:`MAX_ENTRY_BYTES`),
next to what ``validate_entry`` costs for the same bytes, which is what a node
pays for every entry it receives anyway. BLAKE3 is not a dependency; install the
``blake3`` package to include it.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Callable
from typing import Any

from bench._table import print_table
from eidetica.protocol.entry import Entry, StoreWrite, create_entry, validate_entry
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import MAX_ENTRY_BYTES
from eidetica.storage.crdt import SetOp, encode_ops
from tests.builders import root_entry

MIN_RUN_SECONDS = 0.05
REPEATS = 5


def _load_blake3() -> Callable[[bytes], str] | None:
    try:
        module = importlib.import_module("blake3")
    except ImportError:
        return None
    hasher: Callable[[bytes], Any] = module.blake3
    return lambda data: str(hasher(data).hexdigest())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _padded_entry(key: SigningKey, parent: Entry, padding: int) -> Entry:
    data = encode_ops([SetOp(("note",), "x" * padding)])
    return create_entry(
        key,
        tree=parent.tree_id,
        parents=[parent.id],
        height=parent.height + 1,
        stores=[StoreWrite("d", (), data)],
    )


def _doc_entry(key: SigningKey, parent: Entry, size: int) -> Entry:
    """A document write as close to ``size`` bytes as it gets without going over (or
    the smallest one, if ``size`` is below that)."""
    entry = _padded_entry(key, parent, 0)
    # Aim a little short at first, as length headers grow with the padding.
    padding = max(0, size - len(entry.raw) - 16)
    for _ in range(4):
        candidate = _padded_entry(key, parent, padding)
        if len(candidate.raw) > size:
            break
        entry = candidate
        if len(entry.raw) == size:
            break
        padding += size - len(entry.raw)
    return entry


def _entries() -> dict[str, Entry]:
    """Typical entries by description: a root, and document writes of rising size."""
    key = SigningKey.generate()
    root = root_entry(key)
    return {
        "root entry": root,
        "smallest doc write": _doc_entry(key, root, 200),
        "~1 KB doc write": _doc_entry(key, root, 1024),
        "~16 KB doc write": _doc_entry(key, root, 16 * 1024),
        "MAX_ENTRY_BYTES": _doc_entry(key, root, MAX_ENTRY_BYTES),
    }


def _microseconds(function: Callable[[bytes], object], data: bytes) -> float:
    """Best of :data:`REPEATS` runs, each long enough to time, in µs per call."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            function(data)
        if time.perf_counter() - start >= MIN_RUN_SECONDS:
            break
        loops *= 2
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(loops):
            function(data)
        best = min(best, time.perf_counter() - start)
    return best / loops * 1e6


def main() -> None:
    blake3 = _load_blake3()
    rows = []
    for label, entry in _entries().items():
        raw = entry.raw
        sha = _microseconds(_sha256, raw)
        blake = _microseconds(blake3, raw) if blake3 is not None else None
        rows.append(
            [
                label,
                f"{len(raw):,}",
                f"{sha:.2f}",
                "n/a" if blake is None else f"{blake:.2f}",
                "n/a" if blake is None else f"{sha / blake:.2f}x",
                f"{_microseconds(validate_entry, raw):.1f}",
            ]
        )
    print_table(
        "Hashing one entry's canonical bytes (hex digest), µs per entry",
        ["entry", "bytes", "SHA-256", "BLAKE3", "BLAKE3 speed-up", "validate_entry"],
        rows,
    )
    if blake3 is None:
        print("blake3 is not installed (pip install blake3), so its column is n/a.")


if __name__ == "__main__":
    main()
