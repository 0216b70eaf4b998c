"""Set summaries: a Bloom filter of the entries a side holds above some height.

A peer answering a sync walks down from its tips and stops at entries the summary
says the asker holds. A false positive can only make it send too little, never too
much; the asker then finds a parent missing and names it in ``need``. Entry ids are
already uniform hashes, so the filter's indexes are cut from the id itself, mixed
with a per-request salt so that a false positive does not repeat.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from eidetica.protocol import limits
from eidetica.protocol.dagview import DagView, Node
from eidetica.protocol.messages import Summary

BITS_PER_ENTRY = 16
HASHES = 11  # about 0.05% false positives at 16 bits per entry
MIN_BITS = 1024
SALT_BYTES = 16
"""Bytes of a summary's salt."""
WINDOW_HEIGHTS = 4096
"""How far below the highest tip a summary reaches by default."""

_MASK = (1 << 64) - 1


def summarize(
    view: DagView,
    *,
    min_height: int,
    salt: bytes | None = None,
) -> Summary:
    """A summary of the entries of ``view`` from ``min_height`` up, mixed with
    ``salt`` (default: fresh from ``os.urandom``)."""
    ids = list(view.ids_from(min_height))
    bit_count = max(MIN_BITS, len(ids) * BITS_PER_ENTRY)
    byte_count = min((bit_count + 7) // 8, limits.MAX_FILTER_BYTES)
    bits = bytearray(byte_count)
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    for index in _indexes(ids, salt, byte_count * 8):
        bits[index >> 3] |= 1 << (index & 7)
    return Summary(min_height=min_height, hashes=HASHES, salt=salt, bits=bytes(bits))


def summary_holds(summary: Summary, view: DagView) -> Callable[[str, Node], bool]:
    """A test for "the summary's owner holds this entry", for :func:`dagview.walk`.

    An entry counts as held only if it and its parents are all in the filter: a walk
    stops at a held entry and so withholds everything below it, and requiring the
    parents too makes that happen by mistake only when several false positives line
    up. One false positive alone withholds only that entry, which the owner then
    names in ``need``. Below the summary's reach the answer is no: the walk goes on,
    unless an entry the owner named in ``haves`` stops it first.
    """
    size = len(summary.bits) * 8
    bits = summary.bits
    salt = summary.salt
    hashes = summary.hashes
    min_height = summary.min_height
    if size == 0:
        return lambda entry_id, node: False

    def contains(entry_id: str) -> bool:
        first, step = _seeds(entry_id, salt)
        for i in range(hashes):
            index = (first + i * step) % size
            if not bits[index >> 3] & (1 << (index & 7)):
                return False
        return True

    def holds(entry_id: str, node: Node) -> bool:
        if node.height < min_height or not contains(entry_id):
            return False
        parents = view.nodes(node.parents)
        return all(p.height < min_height or contains(i) for i, p in parents.items())

    return holds


def _seeds(entry_id: str, salt: bytes) -> tuple[int, int]:
    mix = int.from_bytes(salt.ljust(16, b"\0")[:16], "big")
    value = int(entry_id[:32], 16) ^ mix
    return value >> 64, (value & _MASK) | 1


def _indexes(ids: Iterable[str], salt: bytes, size: int) -> Iterable[int]:
    for entry_id in ids:
        first, step = _seeds(entry_id, salt)
        for i in range(HASHES):
            yield (first + i * step) % size
