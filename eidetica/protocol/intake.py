"""Received entries on their way to storage: checked, then released parents first.

Every received entry is validated on its own (bytes, id, signature, shape) and must
belong to the tree it was sent for. One whose parents are not stored yet waits in a
bounded holding area and is released once they are, so storage only ever sees
entries whose parents it holds. Checks that need the tree's settings (permissions)
are the store's, on what this releases.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from eidetica.errors import IdMismatch, InvalidEntry, WrongTree
from eidetica.protocol.entry import Entry, validate_entry

MAX_HELD = 10_000
"""Entries held for missing parents, per node; past it the oldest are dropped."""

MAX_HELD_BYTES = 64 * 1024 * 1024
"""Bytes of entries held, per node: entries may be large, so counting them is not enough."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry that was refused, and why."""

    id: str | None
    error: InvalidEntry

    @property
    def reason(self) -> str:
        return str(self.error)


StoredQuery = Callable[[Iterable[str]], set[str]]
"""Which of these ids are stored."""


class Intake:
    """The holding area of one node, for all its trees."""

    def __init__(self, max_held: int = MAX_HELD, max_bytes: int = MAX_HELD_BYTES) -> None:
        self._held: OrderedDict[str, Entry] = OrderedDict()
        self._max_held = max_held
        self._max_bytes = max_bytes
        self._bytes = 0
        self.dropped = 0
        """Held entries dropped because the area was full (they will be asked for again)."""

    def offer(
        self, tree: str, raws: Iterable[bytes], ids: Iterable[str | None] | None = None
    ) -> list[Rejection]:
        """Validate received entries for ``tree`` and hold the valid ones until
        :meth:`release`; return the rejections. ``ids``, if given, are the ids the
        sender claimed, checked against the bytes."""
        rejections: list[Rejection] = []
        claims = list(ids) if ids is not None else None
        for index, raw in enumerate(raws):
            claimed = claims[index] if claims is not None else None
            try:
                entry = validate_entry(raw, claimed)
                if entry.tree_id != tree:
                    raise WrongTree(f"entry {entry.id} belongs to tree {entry.tree_id}, not {tree}")
            except InvalidEntry as exc:
                rejections.append(Rejection(claimed if isinstance(exc, IdMismatch) else None, exc))
                continue
            if entry.id not in self._held:
                self._bytes += len(entry.raw)
            self._held[entry.id] = entry
            self._held.move_to_end(entry.id)
        while len(self._held) > self._max_held or self._bytes > self._max_bytes:
            self._take(next(iter(self._held)))
            self.dropped += 1
        return rejections

    def _take(self, entry_id: str) -> Entry | None:
        entry = self._held.pop(entry_id, None)
        if entry is not None:
            self._bytes -= len(entry.raw)
        return entry

    def release(self, tree: str, stored: StoredQuery) -> list[Entry]:
        """Entries of ``tree`` whose parents are stored or released with them, in
        (height, id) order, taken out of the holding area. Held entries that are
        already stored are dropped."""
        held = sorted((e for e in self._held.values() if e.tree_id == tree), key=lambda e: e.key)
        if not held:
            return []
        already = stored([e.id for e in held])
        outside = {p for e in held for p in e.parents if p not in self._held}
        present = stored(outside) | already
        released: list[Entry] = []
        for entry in held:
            if entry.id in already:
                self._take(entry.id)
            elif all(p in present for p in entry.parents):
                present.add(entry.id)
                released.append(entry)
                self._take(entry.id)
        return released

    def missing(self, tree: str, stored: StoredQuery) -> set[str]:
        """Parents that held entries of ``tree`` wait for: neither held nor stored."""
        wanted = {
            p for e in self._held.values() if e.tree_id == tree for p in e.parents
        } - self._held.keys()
        return wanted - stored(wanted)

    @property
    def held_bytes(self) -> int:
        """Bytes of all entries now held."""
        return self._bytes

    def held(self, tree: str) -> int:
        """How many entries of ``tree`` are waiting."""
        return sum(1 for e in self._held.values() if e.tree_id == tree)

    def forget(self, ids: Iterable[str]) -> None:
        """Drop held entries (their ancestry was rejected)."""
        for entry_id in ids:
            self._take(entry_id)
