"""Received entries on their way to storage: checked, then released parents first.

Every received entry is validated on its own (bytes, id, shape), must belong to the
tree it was sent for, and must be authentic: its signature verifies, or an authentic
entry by the same author names it (:mod:`eidetica.protocol.hashchain`). One whose
parents are not stored yet waits in a bounded holding area and is released once they
are, so storage only ever sees entries whose parents it holds. Checks that need the
tree's settings (permissions) are the store's, on what this releases.

The holding area is shared by every tree and every peer of a node, so it is bounded
per sender as well as in total: a stranger who sends entries nobody can place (their
parents never come) fills its own quota and pushes out its own entries, not those
other peers are waiting on.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from eidetica.errors import BadSignature, IdMismatch, InvalidEntry, WrongTree
from eidetica.protocol.entry import Entry, check_signature, read_entry
from eidetica.protocol.hashchain import Authentication, named

MAX_HELD = 10_000
"""Entries held for missing parents, per node."""

MAX_HELD_BYTES = 64 * 1024 * 1024
"""Memory held entries may take, per node, as counted by :func:`footprint`."""

MAX_HELD_PER_SOURCE = 1_000
"""Entries one sender may have waiting."""

MAX_BYTES_PER_SOURCE = 8 * 1024 * 1024
"""Memory one sender's waiting entries may take, as counted by :func:`footprint`."""

ENTRY_OVERHEAD = 1_500
"""Bytes of memory a held entry takes whatever its size: the ``Entry`` and its fields'
objects, its id, its cached-property dict, and this module's index entries."""

ID_OVERHEAD = 128
"""Bytes of memory each parent id of a held entry takes besides its share of the
encoding: a 64-character ``str`` is a 113-byte object (128 in the allocator's size
class) and a pointer in a tuple."""


def check(
    tree: str,
    raws: Iterable[bytes],
    ids: Iterable[str | None] | None = None,
    vouched: Vouched | None = None,
) -> tuple[list[Entry], list[Rejection]]:
    """Validate each entry on its own (bytes, id, shape) and that it belongs to
    ``tree``, and authenticate them through their hash chains
    (:mod:`eidetica.protocol.hashchain`): the valid entries, in order, and the
    rejections, in order. ``ids``, if given, are the ids the sender claimed, checked
    against the bytes; ``vouched`` names entries vouched for from outside the batch.
    Pure, so it may run in a worker thread (with ``vouched`` pure too)."""
    batch = read(tree, list(raws), None if ids is None else list(ids))
    authentication = Authentication(entry for _, entry in batch.entries)
    while pending := authentication.to_check():
        authentication.checked(zip(pending, signature_errors(pending), strict=True))
    return settle(batch, authentication, vouched)


Vouched = Callable[[list[Entry]], Iterable[str]]
"""Which of these entries (each failed its own signature check) something outside
the batch vouches for: they are stored already, or a held entry by the same author
names them."""


@dataclass(frozen=True, slots=True)
class Read:
    """A batch's entries that passed every check but the signature's, and its
    rejections so far, each with its place in the batch."""

    entries: list[tuple[int, Entry]]
    rejections: list[tuple[int, Rejection]]


def read(
    tree: str, raws: Sequence[bytes], ids: Sequence[str | None] | None = None, *, start: int = 0
) -> Read:
    """Decode each entry, check its id (against ``ids``, if given, the sender's claims)
    and shape, and that it belongs to ``tree``; no signature checks. ``start`` is the
    place of ``raws[0]`` in the whole batch, for a slice. Pure."""
    batch = Read([], [])
    for offset, raw in enumerate(raws):
        claimed = ids[offset] if ids is not None else None
        try:
            entry = read_entry(raw, claimed)
            if entry.tree_id != tree:
                raise WrongTree(f"entry {entry.id} belongs to tree {entry.tree_id}, not {tree}")
        except InvalidEntry as exc:
            rejection = Rejection(claimed if isinstance(exc, IdMismatch) else None, exc)
            batch.rejections.append((start + offset, rejection))
            continue
        batch.entries.append((start + offset, entry))
    return batch


Checked = list[tuple[Entry, BadSignature | None]]
"""Entries whose signatures were checked, each with its error (None: it verifies)."""


def read_slice(
    tree: str, raws: Sequence[bytes], ids: Sequence[str | None] | None = None, *, start: int = 0
) -> tuple[Read, Checked]:
    """:func:`read` a slice of a batch, and check the signatures of the slice's own
    heads (the entries no same-author entry of the slice names). Every head of the
    whole batch is a head of its slice, so a batch read in slices this way needs no
    further checks unless one fails; the cost is a check or so more per author's run
    per slice boundary, and each thread's reading overlaps another's signature checks,
    which let go of the GIL. Pure."""
    batch = read(tree, raws, ids, start=start)
    heads = Authentication(entry for _, entry in batch.entries).to_check()
    return batch, list(zip(heads, signature_errors(heads), strict=True))


def signature_errors(entries: Sequence[Entry]) -> list[BadSignature | None]:
    """Each entry's signature check: its error, or None if it verifies. Pure."""
    errors: list[BadSignature | None] = []
    for entry in entries:
        try:
            check_signature(entry)
        except BadSignature as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


def settle(
    batch: Read, authentication: Authentication, vouched: Vouched | None = None
) -> tuple[list[Entry], list[Rejection]]:
    """The batch's authentic entries and its rejections, each in the batch's order,
    once every entry is resolved: ``vouched`` is asked about those whose own check
    failed, and what it names vouches for them and, through them, for the rest of
    their chains in the batch."""
    failed = authentication.failed_entries()
    if failed and vouched is not None:
        authentication.vouch(vouched(failed))
    errors = authentication.failed
    valid: list[Entry] = []
    rejections = list(batch.rejections)
    for place, entry in batch.entries:
        error = errors.get(entry.id)
        if error is None:
            valid.append(entry)
        else:
            rejections.append((place, Rejection(None, error)))
    rejections.sort(key=lambda item: item[0])
    return valid, [rejection for _, rejection in rejections]


def footprint(entry: Entry) -> int:
    """The memory, in bytes, that holding ``entry`` is counted as taking.

    The caps are on memory rather than on encoded bytes because memory is what a flood
    costs: when they counted encoded bytes, a full 64 MiB area took 160 to 250 MiB of
    resident memory. A held entry is kept decoded, with its canonical bytes: msgspec
    leaves up to half again of spare room in the buffer it encodes into, and the decoded
    store data is a second copy of the payload, hence two and a half times the encoded
    size; ids cost more than that (:data:`ID_OVERHEAD`), and small entries are mostly
    fixed costs (:data:`ENTRY_OVERHEAD`).

    Measured on CPython 3.11 by flooding an area with default caps until full, the
    resident memory per held entry was 0.88 to 1.02 times this count for payloads of
    300 bytes to 250 KiB and for entries of 64 or 512 parents (about 2,300 bytes for a
    small entry, 12,300 for one with 4 KiB of data), and 0.76 times it for entries made
    of store parents.
    """
    ids = len(entry.parents) + sum(len(write.parents) for write in entry.stores)
    return len(entry.raw) * 5 // 2 + ID_OVERHEAD * ids + ENTRY_OVERHEAD


Source = str | None
"""Who sent entries: a peer's proven key, or None for the node itself or an unknown."""


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


@dataclass(frozen=True, slots=True)
class _Held:
    """A waiting entry, the sender whose quota it counts against, and its footprint."""

    entry: Entry
    source: Source
    cost: int


@dataclass(slots=True)
class _Bucket:
    """One sender's waiting entries, oldest first, and their total footprint."""

    ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    cost: int = 0


def _order(entry: Entry) -> tuple[int, str]:
    return entry.key


class _Ranking:
    """Senders by one measure, so the largest is found without a scan.

    A heap of (negated value, sequence, sender) with stale items left in place and
    skipped when they reach the top; it is rebuilt from the current values once stale
    items outnumber live ones, so every change costs amortised O(log senders).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Source]] = []
        self._values: dict[Source, int] = {}
        self._sequence = itertools.count()

    def set(self, source: Source, value: int) -> None:
        if value:
            self._values[source] = value
            heapq.heappush(self._heap, (-value, next(self._sequence), source))
        else:
            self._values.pop(source, None)
        if len(self._heap) > 2 * len(self._values) + 64:
            self._heap = [(-v, next(self._sequence), s) for s, v in self._values.items()]
            heapq.heapify(self._heap)

    def largest(self) -> Source:
        """The sender with the largest value (there must be one)."""
        while True:
            negated, _, source = self._heap[0]
            if self._values.get(source) == -negated:
                return source
            heapq.heappop(self._heap)


class Intake:
    """The holding area of one node, for all its trees and senders.

    Each entry counts against the quota of the sender that offered it first
    (``max_held_per_source`` entries, ``max_bytes_per_source`` of :func:`footprint`);
    a sender over its quota loses its own oldest entries. When the whole area is over
    ``max_held`` or ``max_bytes``, the sender holding the most (in the measure that is
    over) loses its oldest, so a flood costs the flooder first. Dropped entries are
    counted in :attr:`dropped`; their trees will ask for them again.

    The caps bound what *waits*: they are applied when :meth:`release` has taken out
    what an offer made ready (and before the next offer), so a batch sent parents
    first is never cut by its own sender's quota, whatever its size. Between an offer
    and its release the area may be over its caps by that one batch, which the
    caller's message limits bound.
    """

    def __init__(
        self,
        max_held: int = MAX_HELD,
        max_bytes: int = MAX_HELD_BYTES,
        *,
        max_held_per_source: int = MAX_HELD_PER_SOURCE,
        max_bytes_per_source: int = MAX_BYTES_PER_SOURCE,
    ) -> None:
        self._max_held = max_held
        self._max_bytes = max_bytes
        self._max_held_per_source = max_held_per_source
        self._max_bytes_per_source = max_bytes_per_source
        self._held: dict[str, _Held] = {}
        self._trees: dict[str, set[str]] = {}
        self._buckets: dict[Source, _Bucket] = {}
        self._by_count = _Ranking()
        self._by_bytes = _Ranking()
        self._grown: set[Source] = set()
        self._bytes = 0
        self.dropped = 0
        """Held entries dropped because a quota or the area was full (they will be asked
        for again)."""

    def set_quota(self, entries: int, size: int | None = None) -> None:
        """Change what one sender may hold: ``entries`` entries and ``size`` bytes of
        footprint (unchanged if ``None``). It takes effect at the next offer or release,
        where the caps are applied anyway."""
        if entries < 1 or (size is not None and size < 1):
            raise ValueError(f"a sender's quota must be at least 1, not {entries}, {size}")
        self._max_held_per_source = entries
        if size is not None:
            self._max_bytes_per_source = size
        self._grown.update(self._buckets)  # every sender is measured again

    def offer(
        self,
        tree: str,
        raws: Iterable[bytes],
        ids: Iterable[str | None] | None = None,
        *,
        source: Source = None,
    ) -> list[Rejection]:
        """Validate entries ``source`` sent for ``tree`` (:func:`check`, where held
        entries vouch too) and hold the valid ones until :meth:`release`; return the
        rejections."""
        valid, rejections = check(tree, raws, ids, lambda failed: self.vouched(tree, failed))
        self.hold(valid, source)
        return rejections

    def hold(self, entries: Iterable[Entry], source: Source = None) -> None:
        """Hold entries :func:`check` passed until :meth:`release`. An entry already
        held stays where it is, counted against whoever offered it first; offered again
        by that sender, it counts as its newest."""
        self._enforce_caps()
        for entry in entries:
            self._hold(entry, source)

    def release(self, tree: str, stored: StoredQuery) -> list[Entry]:
        """Entries of ``tree`` whose parents are stored or released with them, in
        (height, id) order, taken out of the holding area; then the caps are applied
        to what still waits. Held entries that are already stored are dropped."""
        released = self._take_ready(tree, stored)
        self._enforce_caps()
        return released

    def _take_ready(self, tree: str, stored: StoredQuery) -> list[Entry]:
        held = sorted((self._held[i].entry for i in self._trees.get(tree, ())), key=_order)
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

    def vouched(self, tree: str, entries: Iterable[Entry]) -> set[str]:
        """The ids of ``entries`` that a held entry of ``tree`` by the same author
        names: held entries are authentic, so these are too (however their own
        signatures fare). One pass over the tree's held entries."""
        wanted = {entry.id: entry.author for entry in entries}
        if not wanted:
            return set()
        found: set[str] = set()
        for entry_id in self._trees.get(tree, ()):
            held = self._held[entry_id].entry
            found.update(i for i in named(held) if wanted.get(i) == held.author)
        return found

    def waiting(self, tree: str) -> list[Entry]:
        """The entries of ``tree`` held until their parents arrive (unverified beyond
        their own bytes and their authenticity)."""
        return [self._held[i].entry for i in self._trees.get(tree, ())]

    def missing(self, tree: str, stored: StoredQuery) -> set[str]:
        """Parents that held entries of ``tree`` wait for: neither held nor stored."""
        wanted = {
            p for i in self._trees.get(tree, ()) for p in self._held[i].entry.parents
        } - self._held.keys()
        return wanted - stored(wanted)

    @property
    def held_entries(self) -> int:
        """How many entries are waiting, of all trees."""
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        """The :func:`footprint` of all entries now held."""
        return self._bytes

    def held(self, tree: str) -> int:
        """How many entries of ``tree`` are waiting."""
        return len(self._trees.get(tree, ()))

    def held_by(self, source: Source) -> int:
        """How many waiting entries count against ``source``'s quota."""
        bucket = self._buckets.get(source)
        return len(bucket.ids) if bucket is not None else 0

    def held_bytes_by(self, source: Source) -> int:
        """The :func:`footprint` of the waiting entries counted against ``source``."""
        bucket = self._buckets.get(source)
        return bucket.cost if bucket is not None else 0

    def forget(self, ids: Iterable[str]) -> None:
        """Drop held entries (their ancestry was rejected)."""
        for entry_id in ids:
            self._take(entry_id)

    def _hold(self, entry: Entry, source: Source) -> None:
        """Hold ``entry`` for ``source``, or refresh it if that sender holds it already."""
        existing = self._held.get(entry.id)
        if existing is not None:
            if existing.source == source:
                self._buckets[source].ids.move_to_end(entry.id)
            return
        held = _Held(entry, source, footprint(entry))
        self._held[entry.id] = held
        self._trees.setdefault(entry.tree_id, set()).add(entry.id)
        bucket = self._buckets.setdefault(source, _Bucket())
        bucket.ids[entry.id] = None
        self._account(source, bucket, held.cost)
        self._grown.add(source)

    def _take(self, entry_id: str) -> None:
        """Take an entry out of the holding area, if it is there, and out of its quota."""
        held = self._held.pop(entry_id, None)
        if held is None:
            return
        tree = held.entry.tree_id
        self._trees[tree].discard(entry_id)
        if not self._trees[tree]:
            del self._trees[tree]
        bucket = self._buckets[held.source]
        del bucket.ids[entry_id]
        self._account(held.source, bucket, -held.cost)
        if not bucket.ids:
            del self._buckets[held.source]

    def _account(self, source: Source, bucket: _Bucket, cost: int) -> None:
        """Add ``cost`` (negative when an entry leaves) to ``source``'s and the area's
        totals, after ``bucket.ids`` changed."""
        bucket.cost += cost
        self._bytes += cost
        self._by_count.set(source, len(bucket.ids))
        self._by_bytes.set(source, bucket.cost)

    def _enforce_caps(self) -> None:
        """Drop oldest entries until every sender that grew is within its quota and the
        area within its caps; each drop costs amortised O(log senders)."""
        for source in self._grown:
            bucket = self._buckets.get(source)
            while bucket is not None and (
                len(bucket.ids) > self._max_held_per_source
                or bucket.cost > self._max_bytes_per_source
            ):
                self._drop_oldest(source)
                bucket = self._buckets.get(source)
        self._grown.clear()
        while len(self._held) > self._max_held:
            self._drop_oldest(self._by_count.largest())
        while self._bytes > self._max_bytes:
            self._drop_oldest(self._by_bytes.largest())

    def _drop_oldest(self, source: Source) -> None:
        self._take(next(iter(self._buckets[source].ids)))
        self.dropped += 1
