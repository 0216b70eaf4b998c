"""Cached document states, so reading a document never refolds its whole history.

A store's state is its entries' operations folded in (height, id) order. The cache
keeps the folded state with the key of the last entry in it. An entry stored later
with a higher key (every local commit, most received ones) is applied on top; one
that sorts earlier (a late arrival from a concurrent branch) rewinds the fold to the
newest checkpoint before it and replays from there. Checkpoints are taken every
:data:`CHECKPOINT_EVERY` entries.

States are shared, never copied whole: a reader's snapshot, and a checkpoint, are the
state's root as it was, and the fold copies only the dicts on the paths it changes
afterwards (copy-on-write), so a write after a read costs the path, not the document.

Entries that do not count (see :mod:`eidetica.storage.revocation`) are passed over.
What counts changes only when a settings entry arrives; a fold made under another
verdict is started again from nothing.

Folds are also persisted, so a reopened node does not refold a long history: after a
read has folded :data:`SNAPSHOT_EVERY` entries since the last snapshot of that store,
and at :meth:`DocStates.persist` (when the instance closes), the fold goes to the
backend as a :class:`~eidetica.storage.backend.Snapshot`: its state, the key of its
last entry, how many entries it applied, and a digest of the verdict it was folded
under. A fold that starts from nothing starts from the snapshot instead when its
digest matches the verdict now; the backend has dropped any snapshot that an
earlier-sorting entry stored since made stale, in the same transaction. A lost or
unreadable snapshot costs a refold, never a wrong read.

A snapshot keeps the document's top level in shards (:mod:`eidetica.storage.shards`),
so a cold read decodes only the shards it reads, not the whole document. A fold is
kept in shards from its first snapshot on, so later snapshots encode only the shards
that changed (and split it again into more shards once they are crowded).
:meth:`DocStates.view` hands readers that form; :meth:`DocStates.state` hands out one
dict (the settings readers want one), merging the shards once. Snapshots written
before shards (format 1: the whole state as one map) are still read, and rewritten
in shards when the instance closes. A shard that does not decode when a read first
needs it raises :class:`StorageError` from that read: shards are decoded lazily, so
their damage is found late.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from eidetica.errors import StorageError
from eidetica.protocol.entry import Entry
from eidetica.storage.backend import Backend, OrderKey, Snapshot
from eidetica.storage.crdt import Document, Owned, Root, apply_to_root, decode_ops
from eidetica.storage.judge import Judge
from eidetica.storage.revocation import Fingerprint
from eidetica.storage.shards import Shards

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 1024
REPLAY_CHUNK = 512
MAX_PENDING = 4096
"""Past this many unread new entries, the cache stops holding them and replays from storage."""
SNAPSHOT_EVERY = 4096
"""Entries a read folds past a store's last snapshot before it writes another: a
snapshot costs the whole document's encoding, so this spreads it over many entries."""
MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024
"""A document whose snapshot would be larger is refolded on a cold read instead."""


class _Whole(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=1):
    """Format 1 of a snapshot's data (beside the key the backend keeps): the state as
    one map. No longer written; read so that snapshots from before shards are used."""

    applied: int
    verdict: bytes
    state: dict[str, Any]


class _Sharded(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=2):
    """Format 2 of a snapshot's data: the state's top level as shards, each the
    msgpack of its map, decoded only when read (:class:`Shards`)."""

    applied: int
    verdict: bytes
    shards: list[bytes]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Whole | _Sharded)


def verdict_digest(fingerprint: Fingerprint) -> bytes:
    """A digest of a verdict's fingerprint that is the same in every process."""
    voided, revocations, ranks = fingerprint
    encoded = _ENCODER.encode([sorted(voided), list(revocations), list(ranks)])
    return hashlib.blake2b(encoded, digest_size=16).digest()


@dataclass
class _Fold:
    state: Root = field(default_factory=dict)
    last: OrderKey | None = None
    applied: int = 0
    checkpoints: list[tuple[OrderKey, int, Root]] = field(default_factory=list)
    pending: list[Entry] = field(default_factory=list)
    behind: bool = False
    """Entries after ``last`` were stored but not kept in ``pending``: replay them."""
    rewind_to: OrderKey | None = None
    owned: Owned = field(default_factory=dict)
    """Dicts of ``state`` that no snapshot or checkpoint shares (see ``apply_ops``)."""
    verdict: Fingerprint | None = None
    """The fingerprint of the verdict on what counts that this fold was made under."""
    persisted: int = 0
    """``applied`` as of the last snapshot written or read (or tried)."""
    outdated: bool = False
    """The snapshot this fold resumed from is in format 1: write it again in shards."""

    def mark_persisted(self) -> None:
        """A snapshot was written, or will not be (too large, failed): none is due."""
        self.persisted = self.applied
        self.outdated = False


class DocStates:
    """Folded document states of every store a reader has asked for."""

    def __init__(
        self,
        backend: Backend,
        judge: Judge | None = None,
        *,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._backend = backend
        self._judge = judge or Judge(backend)
        self._busy = busy or (lambda: False)
        """Whether a write is under way in a worker thread: then the backend refuses a
        snapshot (see :meth:`Backend.put_snapshot`), so none is encoded."""
        self._folds: dict[tuple[str, str], _Fold] = {}

    def stored(self, entry: Entry) -> None:
        """Tell the cache that ``entry`` is now stored."""
        for write in entry.stores:
            fold = self._folds.get((entry.tree_id, write.name))
            if fold is None:
                continue
            if fold.last is None or entry.key > fold.last:
                if fold.behind or len(fold.pending) >= MAX_PENDING:
                    fold.pending.clear()
                    fold.behind = True
                else:
                    fold.pending.append(entry)
            elif fold.rewind_to is None or entry.key < fold.rewind_to:
                fold.rewind_to = entry.key

    def state(self, tree: str, store: str) -> Document:
        """The current state of one store, as one dict. Shared with the cache: never
        mutate it. A state in shards is merged (once: the fold keeps the merged one)."""
        fold = self._fold(tree, store)
        if isinstance(fold.state, Shards):
            fold.state = fold.state.to_dict()
        return fold.state

    def view(self, tree: str, store: str) -> Root:
        """The current state of one store, in shards if the fold keeps it so (see
        :func:`~eidetica.storage.crdt.lookup`). Shared with the cache: never mutate it."""
        return self._fold(tree, store).state

    def _fold(self, tree: str, store: str) -> _Fold:
        """The store's fold, brought up to date with every entry stored."""
        fold = self._folds.get((tree, store))
        verdict = self._judge.of_tree(tree).fingerprint
        if fold is None or fold.verdict != verdict:
            fold = self._folds[tree, store] = _Fold(verdict=verdict)
            self._resume(tree, store, fold, verdict)
            self._replay(tree, store, fold)
        elif fold.rewind_to is not None:
            self._rewind(fold, fold.rewind_to)
            self._replay(tree, store, fold)
        elif fold.behind:
            self._replay(tree, store, fold)
        elif fold.pending:
            fold.pending.sort(key=lambda e: e.key)
            self._apply(tree, store, fold, fold.pending)
            fold.pending.clear()
        fold.owned.clear()  # the reader shares the state from now on
        if fold.applied - fold.persisted >= SNAPSHOT_EVERY:
            self._persist(tree, store, fold)
        return fold

    def persist(self) -> None:
        """Write a snapshot of every fold that applied entries since its last one, so
        the next process to open the backend reads them without refolding. A fold that
        must rewind is not up to date, and is left out."""
        for (tree, store), fold in self._folds.items():
            if (fold.applied > fold.persisted or fold.outdated) and fold.rewind_to is None:
                self._persist(tree, store, fold)

    def _persist(self, tree: str, store: str, fold: _Fold) -> None:
        """Write the fold's snapshot, keeping its state in shards from now on. Called
        only while no dict of the state is owned (a reader may share any of them)."""
        if self._busy():
            return  # a write is under way in a thread: a later read tries again
        if fold.last is None or fold.verdict is None:
            fold.mark_persisted()
            return
        if isinstance(fold.state, dict):
            fold.state = Shards.partition(fold.state)
        elif fold.state.crowded():
            fold.state = Shards.partition(fold.state.to_dict())
        persisted = _Sharded(fold.applied, verdict_digest(fold.verdict), fold.state.encoded())
        data = _ENCODER.encode(persisted)
        if len(data) > MAX_SNAPSHOT_BYTES:
            log.info("document %r of tree %s is too large to snapshot", store, tree)
            fold.mark_persisted()
            return
        try:
            if self._backend.put_snapshot(tree, store, Snapshot(fold.last, data)):
                fold.mark_persisted()  # else a write is under way: a later read tries
        except StorageError as exc:  # a lost snapshot costs a refold, no more
            fold.mark_persisted()
            log.warning("snapshot of %r in tree %s not stored: %s", store, tree, exc)

    def _resume(self, tree: str, store: str, fold: _Fold, verdict: Fingerprint) -> None:
        """Start ``fold`` from the store's snapshot, if it was folded under ``verdict``."""
        try:
            snapshot = self._backend.get_snapshot(tree, store)
            if snapshot is None:
                return
            persisted = _DECODER.decode(snapshot.data)
            state: Root
            match persisted:
                case _Sharded(shards=shards):
                    state = Shards.from_encoded(shards)
                case _Whole(state=whole):
                    state = whole
        except (msgspec.DecodeError, StorageError) as exc:
            log.warning("snapshot of %r in tree %s is unreadable, refolding: %s", store, tree, exc)
            return
        if persisted.applied < 1 or persisted.verdict != verdict_digest(verdict):
            return
        fold.state, fold.last = state, snapshot.last
        fold.outdated = isinstance(persisted, _Whole)
        fold.applied = fold.persisted = persisted.applied
        fold.checkpoints.append((snapshot.last, fold.applied, fold.state))

    def _rewind(self, fold: _Fold, before: OrderKey) -> None:
        while fold.checkpoints and fold.checkpoints[-1][0] >= before:
            fold.checkpoints.pop()
        if fold.checkpoints:
            fold.last, fold.applied, fold.state = fold.checkpoints[-1]
        else:
            fold.last, fold.applied, fold.state = None, 0, {}
        fold.owned.clear()
        fold.pending.clear()
        fold.behind = False
        fold.rewind_to = None

    def _replay(self, tree: str, store: str, fold: _Fold) -> None:
        fold.pending.clear()
        fold.behind = False
        chunk: list[Entry] = []
        for entry in self._backend.store_entries(tree, store, after=fold.last):
            chunk.append(entry)
            if len(chunk) == REPLAY_CHUNK:
                self._apply(tree, store, fold, chunk)
                chunk = []
        self._apply(tree, store, fold, chunk)

    def _apply(self, tree: str, store: str, fold: _Fold, entries: list[Entry]) -> None:
        """Fold ``entries`` (in key order, all after ``fold.last``) into the state."""
        for entry, counts in zip(entries, self._judge.counting(tree, entries), strict=True):
            if counts:
                write = entry.store(store)
                assert write is not None, "only entries writing the store are folded into it"
                fold.state = apply_to_root(fold.state, decode_ops(write.data), fold.owned)
            fold.last = entry.key
            fold.applied += 1
            if fold.applied % CHECKPOINT_EVERY == 0:
                fold.checkpoints.append((entry.key, fold.applied, fold.state))
                fold.owned.clear()  # the checkpoint shares the state from now on
