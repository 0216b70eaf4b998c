"""The storage backend interface that memory and SQLite implement alike.

A backend stores verified entries and keeps the indexes the rest of the library asks
about: tree and store tips, heights, parents, and entries in (height, id) order.
It never judges an entry; callers verify before they put. Methods are synchronous:
each is a short local operation, and keeping them free of checkpoints means a trio
cancellation can never interrupt a write half-way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

from eidetica.protocol.entry import SETTINGS_STORE, Entry


class Record(msgspec.Struct, frozen=True):
    """An entry ready to store, with what verification derived about it.

    A msgspec struct rather than a frozen dataclass: one is made for every entry
    stored, and a frozen dataclass's ``__init__`` costs ten times as much."""

    entry: Entry
    settings_head: tuple[str, ...]
    """The settings entries in force at this entry, itself included if it changes settings."""


class EntryMeta(msgspec.Struct, frozen=True, gc=False):
    """What the DAG walks and the verifier need to know of a stored entry, without its
    bytes. Made for every entry stored and read, hence a struct, kept out of the cycle
    collector: it holds only strings, ints and tuples of them."""

    id: str
    tree: str
    height: int
    parents: tuple[str, ...]
    stores: tuple[str, ...]
    settings_head: tuple[str, ...]

    @property
    def changes_settings(self) -> bool:
        return SETTINGS_STORE in self.stores

    @classmethod
    def of(cls, record: Record) -> EntryMeta:
        entry = record.entry
        return cls(
            id=entry.id,
            tree=entry.tree_id,
            height=entry.height,
            parents=entry.parents,
            stores=tuple([write.name for write in entry.stores]),
            settings_head=record.settings_head,
        )


OrderKey = tuple[int, str]
"""(height, id): the order entries are folded and listed in."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A store's folded state as of one entry, kept so a reopened node need not refold.

    ``last`` is the key of the last entry folded in; ``data`` is opaque to the backend
    (:mod:`eidetica.storage.docstate` encodes and checks it). The backend's one duty
    is to drop the snapshot when it stores an entry writing that store whose key sorts
    at or before ``last``, in the same transaction: such an entry would have been
    folded in before the ones after it, so the snapshot no longer says what the store
    holds up to ``last``.
    """

    last: OrderKey
    data: bytes


class Backend(Protocol):
    """Where entries live. Every implementation passes ``tests/storage/test_backend.py``."""

    def put(self, records: Sequence[Record]) -> list[str]:
        """Store the records in one transaction; return the ids that were new.

        Idempotent: a record already stored is skipped. Tips stay right in any arrival
        order, a child before its parent included.
        """
        ...

    def get(self, entry_id: str) -> Entry | None:
        """The stored entry with this id."""
        ...

    def meta(self, entry_ids: Iterable[str]) -> dict[str, EntryMeta]:
        """Metadata of those of ``entry_ids`` that are stored."""
        ...

    def has(self, entry_ids: Iterable[str]) -> set[str]:
        """Those of ``entry_ids`` that are stored."""
        ...

    def trees(self) -> list[str]:
        """Root ids of every tree with a stored root entry, sorted."""
        ...

    def tips(self, tree: str) -> list[str]:
        """Stored entries of ``tree`` that no stored entry names as a parent, sorted."""
        ...

    def store_tips(self, tree: str, store: str) -> list[str]:
        """Entries writing ``store`` that no stored write to it names as a parent, sorted."""
        ...

    def tree_entries(self, tree: str, after: OrderKey | None = None) -> Iterator[Entry]:
        """Entries of ``tree`` in (height, id) order, which is parents first."""
        ...

    def tree_ids(self, tree: str, min_height: int = 0) -> Iterator[str]:
        """Ids of the entries of ``tree`` from ``min_height`` up, in (height, id) order."""
        ...

    def store_entries(
        self, tree: str, store: str, after: OrderKey | None = None
    ) -> Iterator[Entry]:
        """Entries writing ``store`` in (height, id) order, from just after ``after``."""
        ...

    def get_local(self, key: str) -> str | None:
        """The node-local value stored under ``key``, or None if it was never set.

        A tiny key/value beside the entries, for facts that belong to this node alone
        and are never synced, such as which tree is its sync tree.
        """
        ...

    def set_local(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any earlier value; durable at once,
        or, while a write runs in a worker thread (:class:`ThreadedWrites`), as soon as
        it ends (read back from memory until then)."""
        ...

    def put_snapshot(self, tree: str, store: str, snapshot: Snapshot) -> bool:
        """Keep ``snapshot`` as the snapshot of ``store``, replacing any; durable at once.

        The caller vouches that it folds every stored entry of the store up to
        ``snapshot.last`` and none after. From then on, :meth:`put` drops it in the
        transaction that stores an entry writing ``store`` with a key at or before
        ``snapshot.last`` (a late arrival from a concurrent branch), so a snapshot
        that is read back is never stale, whenever the process stops.

        False, and nothing kept, while a write runs in a worker thread
        (:class:`ThreadedWrites`): that write may store what the fold did not see, and
        could not drop a snapshot it does not know of. The caller tries again later.
        """
        ...

    def get_snapshot(self, tree: str, store: str) -> Snapshot | None:
        """The snapshot of ``store`` that is still valid, or None."""
        ...

    def healthy(self) -> bool:
        """Whether the store is open and answers (a cheap probe, for health checks)."""
        ...

    def close(self) -> None:
        """Release the backend's resources; it is not used afterwards."""
        ...


@runtime_checkable
class ThreadedWrites(Protocol):
    """A backend whose writes can run in a worker thread while the event loop reads.

    SQLite's writes cost most of a received page's storing and stall the loop; this
    is how :class:`~eidetica.storage.writer.Writer` takes them off it. One write at a
    time, in this order, the loop's parts on the loop:

    1. :meth:`pin` (loop): from now on the loop's reads see what is stored now, and
       go on doing so while the write runs;
    2. :meth:`write` (a worker thread): store the records in one transaction and
       return the function that settles it; no cache the loop reads changes yet;
    3. that function (loop): make what was stored visible to the loop's reads (its
       caches and indexes), and return the ids that were new, as :meth:`Backend.put`
       does;
    4. :meth:`unpin` (loop), in the same step as 3, so the loop never sees the
       stored rows and the caches disagree.

    A write that raises has stored nothing and changed no cache; the loop unpins.
    """

    def pin(self) -> None: ...

    def write(self, records: Sequence[Record]) -> Callable[[], list[str]]: ...

    def unpin(self) -> None: ...
