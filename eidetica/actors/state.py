"""SyncState: what the sync engine must remember across restarts.

Peers and their tree relationships are kept in an ordinary tree of the node's own,
the sync tree: stored by the same backend as everything else (SQLite on disk), so
they survive a restart with no storage of their own. The backend's node-local key
``sync_tree`` names it; lookup never goes by the tree's name, so a user tree that
happens to be called ``_sync`` is never mistaken for it. Peers sit at the seed's path,
in the ``peers`` store: ``{peer_key}`` -> ``{"addresses": [...], "sync_trees": [...]}``.

What changes with every sync or push - cursors, per-peer metadata, the bounded
history and the retry queue - is node-local instead: one JSON document per kind under
a backend-local key (``sync/cursors``, ``sync/metadata``, ``sync/history``,
``sync/retry``), replaced whole on each write and durable at once. As signed entries
they cost about 660 bytes per sync and were never reclaimed, so the sync tree grew
for ever; as local records they take what they hold now. A node whose sync tree still
holds them in its ``sync_state`` and ``retry`` stores (written by an earlier version)
has them copied over the first time it opens, once.

Times of retries are not kept: trio's clock starts afresh with every run. Peer keys
hold base64 characters, so tree paths are always given as tuples, never dotted strings.

Only this node writes its sync state, but two writes from concurrent tasks could both
read it before either writes and one would lose the other's change. Writes therefore
take a lock of this object: keep one ``SyncState`` per instance (the supervisor's) for
writing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import msgspec
import trio

from eidetica.actors.engine.core import Restored
from eidetica.actors.engine.retries import RetryItem
from eidetica.errors import InvalidValue, StorageError, SyncError, TreeNotFound
from eidetica.protocol.entry import is_entry_id
from eidetica.protocol.keys import check_public_key
from eidetica.storage.crdt import Path
from eidetica.storage.docstore import DocStore
from eidetica.storage.instance import Instance
from eidetica.storage.transaction import AtomicOp
from eidetica.storage.tree import Tree

log = logging.getLogger(__name__)

SYNC_TREE_NAME = "_sync"
"""The name the sync tree is created with; for people reading a node, not for lookup."""
SYNC_TREE_KEY = "sync_tree"
"""The backend-local key holding the sync tree's root id."""
REMOVED_KEY = "sync_removed_peers"
"""The backend-local key holding the peers the operator removed (a JSON list): not
registered again by their own requests, across restarts too."""
DEFAULT_MAX_HISTORY = 100
FLUSH_EVERY = 1.0
"""Seconds a written cursor, count or history record may wait to reach storage."""

PEERS = "peers"
SYNC_STATE = "sync_state"
RETRY = "retry"

_CURSORS = "cursors"
_METADATA = "metadata"
_HISTORY = "history"
_HISTORY_ID_DIGITS = 20  # zero-padded, so ids sort as the numbers they are
_LOCAL = {kind: f"sync/{kind}" for kind in (_CURSORS, _METADATA, _HISTORY, RETRY)}
"""The backend-local key of each kind of node-local sync record."""
_MIGRATED_KEY = "sync/local_since"
"""Set once the records an earlier version kept in the sync tree were copied over."""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A known peer: where it may be reached and which trees are kept in sync with it."""

    key: str
    addresses: tuple[str, ...] = ()
    trees: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the last sync of one tree with one peer ended (the seed's SyncCursor).

    ``last_synced_tips`` are the tips both sides held afterwards, so the next exchange
    can start from them instead of from nothing.
    """

    last_synced_tips: tuple[str, ...]
    last_sync_time: float
    total_synced_count: int


@dataclass(frozen=True, slots=True)
class SyncMetadata:
    """Running totals of the syncs with one peer (the seed's SyncMetadata)."""

    successful_sync_count: int = 0
    failed_sync_count: int = 0
    total_entries_synced: int = 0
    average_sync_duration_ms: float = 0.0
    """The mean over every recorded sync, successful or not."""
    pushes: int = 0
    """Pushes of our new entries that the peer took."""
    entries_pushed: int = 0
    requests_served: int = 0
    """Sync requests the peer started and this node answered."""


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One sync as the history keeps it."""

    peer: str
    ok: bool
    entries: int
    duration_ms: float
    tree: str = ""
    direction: str = "pull"
    """``pull``: a sync this node started; ``push``: entries this node sent;
    ``served``: a sync request the peer started."""
    at: float = 0.0
    """Unix time the sync ended (0 in records from before this was kept)."""


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """Entries that could not be pushed to a peer yet, and how often that was tried.

    When the next attempt is due is not kept: it is counted in trio time, which does
    not survive a restart, so a reloaded retry is simply due again.
    """

    peer: str
    tree: str
    entry_ids: tuple[str, ...]
    attempts: int


@dataclass(frozen=True, slots=True)
class _PeerDoc:
    """A peer as stored under ``peers.{key}``, in the seed's field names."""

    addresses: tuple[str, ...] = ()
    sync_trees: tuple[str, ...] = ()


_Record = TypeVar("_Record")


def _dump(record: object) -> Any:
    """A record as the JSON-like value stored for it."""
    return msgspec.to_builtins(record, order="sorted")


def _load(raw: Any, kind: type[_Record], where: Path) -> _Record:
    """The record stored at ``where``; a value of the wrong shape is a StorageError."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        place = "/".join(where)
        raise StorageError(
            f"the sync tree holds no valid {kind.__name__} at {place}: {exc}"
        ) from exc


def _dump_peer(peer: PeerRecord) -> Any:
    return _dump(_PeerDoc(peer.addresses, tuple(sorted(peer.trees))))


def _load_peer(key: str, raw: Any) -> PeerRecord:
    stored = _load(raw, _PeerDoc, (PEERS, key))
    return PeerRecord(key, stored.addresses, frozenset(stored.sync_trees))


def _duration(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidValue(f"a sync duration must be a finite number >= 0, got {value!r}")
    return float(value)


class SyncState:
    """Reads and writes of the sync tree; open one with :meth:`SyncState.open`."""

    def __init__(self, tree: Tree, *, max_history: int = DEFAULT_MAX_HISTORY) -> None:
        if max_history < 1:
            raise SyncError(f"max_history must be at least 1, got {max_history}")
        self.tree = tree
        self._backend = tree.instance.backend
        self.max_history = max_history
        self._lock = trio.Lock()
        self._documents: dict[str, dict[str, Any]] = {}
        """The node-local documents as last read or written, decoded once."""
        self._dirty: set[str] = set()
        """Kinds written to ``_documents`` and not yet to storage (see :meth:`flush`)."""
        self._flushed_at = -math.inf

    @classmethod
    async def open(cls, instance: Instance, *, max_history: int = DEFAULT_MAX_HISTORY) -> SyncState:
        """The sync state of ``instance``, creating its sync tree on first use.

        A node-local key that names a tree the node does not hold is a StorageError:
        making a fresh tree would silently forget every peer.
        """
        backend = instance.backend
        root_id = backend.get_local(SYNC_TREE_KEY)
        if root_id is None:
            tree = await instance.create_tree(SYNC_TREE_NAME)
            backend.set_local(SYNC_TREE_KEY, tree.root_id)
        else:
            try:
                tree = await instance.open_tree(root_id)
            except TreeNotFound as exc:
                raise StorageError(f"the sync tree {root_id} is missing from this node") from exc
        state = cls(tree, max_history=max_history)
        await state._migrate()
        return state

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AtomicOp]:
        """One locked read-modify-write transaction."""
        async with self._lock, self.tree.transaction() as op:
            yield op

    def _local(self, kind: str) -> dict[str, Any]:
        """The node-local document of one kind of record (empty if none was written).
        Read from storage once, then kept: this node alone writes it."""
        document = self._documents.get(kind)
        if document is None:
            raw = self._backend.get_local(_LOCAL[kind])
            document = self._documents[kind] = json.loads(raw) if raw else {}
        return document

    def _put_local(self, kind: str, document: dict[str, Any], *, soon: bool = False) -> None:
        """Replace one kind's document: in storage at once, or, with ``soon``, at the
        latest :data:`FLUSH_EVERY` seconds after the last write (see :meth:`flush`)."""
        self._documents[kind] = document
        self._dirty.add(kind)
        if not soon:
            self.flush()

    def flush_deadline(self) -> float:
        """When what waits is due to be written (trio time; inf if nothing waits)."""
        return self._flushed_at + FLUSH_EVERY if self._dirty else math.inf

    def _flush_if_due(self) -> None:
        """Write what waits if the last write was :data:`FLUSH_EVERY` seconds ago."""
        if trio.current_time() - self._flushed_at >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write every document changed since the last write.

        Cursors, metadata and history are written "soon": each is a whole document
        over every peer, so a hub with a thousand peers would otherwise encode and
        write a thousand peers' records for every push and every sync. A burst
        of them is written once; a node killed meanwhile loses at most the last
        :data:`FLUSH_EVERY` seconds of counts and cursors (a lost cursor costs one
        longer sync). Peers, relationships, removals and retries are written at once.
        """
        self._flushed_at = trio.current_time()  # after a failure, try again then
        for kind in sorted(self._dirty):
            self._backend.set_local(_LOCAL[kind], json.dumps(self._documents[kind], sort_keys=True))
            self._dirty.discard(kind)

    async def _migrate(self) -> None:
        """Copy cursors, metadata, history and retries that an earlier version kept
        in the sync tree to their node-local records, once."""
        if self._backend.get_local(_MIGRATED_KEY) is not None:
            return
        state = (await self.tree.doc(SYNC_STATE)).to_dict()
        for kind in (_CURSORS, _METADATA, _HISTORY):
            if state.get(kind) and not self._local(kind):
                self._put_local(kind, state[kind])
        retries = (await self.tree.doc(RETRY)).to_dict()
        if retries and not self._local(RETRY):
            self._put_local(RETRY, retries)
        self._backend.set_local(_MIGRATED_KEY, "1")

    # Peers the operator removed (node-local: a fact about this node, not to sync)

    def removed(self) -> set[str]:
        raw = self._backend.get_local(REMOVED_KEY)
        return set(json.loads(raw)) if raw else set()

    def set_removed(self, key: str, removed: bool) -> None:
        keys = self.removed()
        if (key in keys) != removed:
            keys = keys | {key} if removed else keys - {key}
            self._backend.set_local(REMOVED_KEY, json.dumps(sorted(keys)))

    # Peers and relationships

    async def add_peer(self, key: str, address: str | None = None) -> None:
        """Remember peer ``key``, and ``address`` among the places it may be reached."""
        check_public_key(key)
        async with self._writing() as op:
            peers = op.doc(PEERS)
            known = self._peer_in(peers, key)
            peer = known or PeerRecord(key)
            if address is not None and address not in peer.addresses:
                peer = PeerRecord(key, (*peer.addresses, address), peer.trees)
            if peer != known:
                peers.set((key,), _dump_peer(peer))

    async def remove_peer(self, key: str) -> None:
        """Forget peer ``key`` and what was kept for sending to it: its relationships,
        cursors and retries. Its metadata and history stay, as the record of the past."""
        async with self._writing() as op:
            peers = op.doc(PEERS)
            if (key,) in peers:
                peers.delete((key,))
            self._drop_local(key, tree=None)

    async def add_relationship(self, key: str, tree: str) -> None:
        """Keep ``tree`` in sync with the known peer ``key``."""
        async with self._writing() as op:
            peers = op.doc(PEERS)
            peer = self._peer_in(peers, key)
            if peer is None:
                raise SyncError(f"unknown peer {key}: add it first")
            if tree not in peer.trees:
                peers.set((key,), _dump_peer(PeerRecord(key, peer.addresses, peer.trees | {tree})))

    async def remove_relationship(self, key: str, tree: str) -> None:
        """Stop keeping ``tree`` in sync with ``key``; its cursor and retries go too."""
        async with self._writing() as op:
            peers = op.doc(PEERS)
            peer = self._peer_in(peers, key)
            if peer is not None and tree in peer.trees:
                peers.set((key,), _dump_peer(PeerRecord(key, peer.addresses, peer.trees - {tree})))
            self._drop_local(key, tree)

    async def kept(self) -> tuple[list[Restored], dict[tuple[str, str], tuple[str, ...]]]:
        """What the engine starts from: the peers with their first address and their
        relationships, and each relationship's cursor tips. A relationship stored
        before tree ids were checked is skipped with a warning, not fatal."""
        kept, cursors = [], {}
        for record in (await self.peers()).values():
            bad = {tree for tree in record.trees if not is_entry_id(tree)}
            if bad:
                log.warning("peer %s: ignoring stored relationships %s", record.key, bad)
            for tree in record.trees - bad:
                cursor = await self.cursor(record.key, tree)
                if cursor is not None:
                    cursors[record.key, tree] = cursor.last_synced_tips
            address = record.addresses[0] if record.addresses else ""
            kept.append(Restored(record.key, address, record.trees - bad))
        return kept, cursors

    async def retry_items(self) -> list[RetryItem]:
        """The persisted retry queue, as items (due at once: times are not kept)."""
        return [
            RetryItem(retry_id, saved.peer, saved.tree, saved.entry_ids, saved.attempts)
            for retry_id, saved in (await self.retries()).items()
        ]

    async def peers(self) -> dict[str, PeerRecord]:
        """Every known peer, by key."""
        stored = (await self.tree.doc(PEERS)).to_dict()
        return {key: _load_peer(key, raw) for key, raw in sorted(stored.items())}

    async def peer(self, key: str) -> PeerRecord | None:
        """Peer ``key``, if it is known."""
        return self._peer_in(await self.tree.doc(PEERS), key)

    async def tree_peers(self, tree: str) -> list[str]:
        """Keys of the peers ``tree`` is kept in sync with, sorted."""
        return [key for key, peer in (await self.peers()).items() if tree in peer.trees]

    @staticmethod
    def _peer_in(peers: DocStore, key: str) -> PeerRecord | None:
        raw = peers.get((key,))
        return None if raw is None else _load_peer(key, raw)

    # Cursors, metadata and history

    async def set_cursor(
        self, peer: str, tree: str, tips: Iterable[str], now: float, synced: int
    ) -> Cursor:
        """Record that a sync of ``tree`` with ``peer`` ended at ``tips`` at time ``now``
        (the caller's clock, stored as given) having moved ``synced`` entries, which are
        added to the cursor's running total. Returns the new cursor."""
        async with self._lock:
            cursors = self._local(_CURSORS)
            previous = await self.cursor(peer, tree)
            total = 0 if previous is None else previous.total_synced_count
            cursor = Cursor(tuple(sorted(set(tips))), float(now), total + synced)
            cursors.setdefault(peer, {})[tree] = _dump(cursor)
            self._put_local(_CURSORS, cursors, soon=True)
            self._flush_if_due()
        return cursor

    async def cursor(self, peer: str, tree: str) -> Cursor | None:
        """The cursor of ``tree`` with ``peer``, or None if they never synced."""
        raw = self._local(_CURSORS).get(peer, {}).get(tree)
        return None if raw is None else _load(raw, Cursor, (_CURSORS, peer, tree))

    async def record_sync(
        self,
        peer: str,
        ok: bool,
        entries: int,
        duration_ms: float,
        *,
        tree: str = "",
        at: float | None = None,
    ) -> None:
        """Count one sync with ``peer`` in its metadata and add it to the history,
        dropping the oldest records beyond ``max_history``. ``entries`` counts towards the
        total even when the sync failed: whatever was stored before the failure stays."""
        duration_ms = _duration(duration_ms)
        async with self._lock:
            before = await self.metadata(peer)
            count = before.successful_sync_count + before.failed_sync_count + 1
            average = before.average_sync_duration_ms
            after = replace(
                before,
                successful_sync_count=before.successful_sync_count + ok,
                failed_sync_count=before.failed_sync_count + (not ok),
                total_entries_synced=before.total_entries_synced + entries,
                average_sync_duration_ms=average + (duration_ms - average) / count,
            )
            self._put_metadata(peer, after)
            self._add_history(
                HistoryRecord(peer, ok, entries, duration_ms, tree, "pull", self._at(at))
            )
            self._flush_if_due()

    async def record_push(self, peer: str, tree: str, entries: int) -> None:
        """Count a push of ``entries`` of ``tree`` that ``peer`` took."""
        async with self._lock:
            before = await self.metadata(peer)
            after = replace(
                before, pushes=before.pushes + 1, entries_pushed=before.entries_pushed + entries
            )
            self._put_metadata(peer, after)
            self._add_history(HistoryRecord(peer, True, entries, 0.0, tree, "push", self._at()))
            self._flush_if_due()

    async def record_served(self, peer: str, tree: str) -> None:
        """Count a sync request for ``tree`` that ``peer`` started and this node answered."""
        async with self._lock:
            before = await self.metadata(peer)
            self._put_metadata(peer, replace(before, requests_served=before.requests_served + 1))
            self._add_history(HistoryRecord(peer, True, 0, 0.0, tree, "served", self._at()))
            self._flush_if_due()

    def _at(self, at: float | None = None) -> float:
        """``at``, or now by the node's wall clock."""
        return self.tree.instance.wall_clock() if at is None else float(at)

    def _put_metadata(self, peer: str, metadata: SyncMetadata) -> None:
        metadata_by_peer = self._local(_METADATA)
        metadata_by_peer[peer] = _dump(metadata)
        self._put_local(_METADATA, metadata_by_peer, soon=True)

    def _add_history(self, record: HistoryRecord) -> None:
        history = self._local(_HISTORY)
        ids = sorted(history)
        number = int(ids[-1]) + 1 if ids else 0
        history[f"{number:0{_HISTORY_ID_DIGITS}d}"] = _dump(record)
        for old in ids[: max(0, len(ids) + 1 - self.max_history)]:
            del history[old]
        self._put_local(_HISTORY, history, soon=True)

    async def metadata(self, peer: str) -> SyncMetadata:
        """The running totals of syncs with ``peer`` (all zero if none was recorded)."""
        raw = self._local(_METADATA).get(peer)
        return SyncMetadata() if raw is None else _load(raw, SyncMetadata, (_METADATA, peer))

    async def history(self) -> list[HistoryRecord]:
        """The recorded syncs, oldest first; at most ``max_history`` of them."""
        stored = self._local(_HISTORY)
        return [
            _load(stored[sync_id], HistoryRecord, (_HISTORY, sync_id)) for sync_id in sorted(stored)
        ]

    # The retry queue

    async def put_retry(self, retry_id: str, record: RetryRecord) -> None:
        """Persist (or replace) the retry ``retry_id``."""
        async with self._lock:
            self._put_local(RETRY, {**self._local(RETRY), retry_id: _dump(record)})

    async def keep_retry(self, item: RetryItem) -> None:
        """Persist a push that has just failed once more: its record counts the failure."""
        record = RetryRecord(item.peer, item.tree, item.entry_ids, item.attempts + 1)
        await self.put_retry(item.id, record)

    async def drop_retry(self, retry_id: str) -> None:
        """Forget the retry ``retry_id``, if it is kept."""
        async with self._lock:
            retries = self._local(RETRY)
            if retries.pop(retry_id, None) is not None:
                self._put_local(RETRY, retries)

    async def retries(self) -> dict[str, RetryRecord]:
        """Every persisted retry, by id."""
        stored = self._local(RETRY)
        return {
            retry_id: _load(raw, RetryRecord, (RETRY, retry_id))
            for retry_id, raw in sorted(stored.items())
        }

    def _drop_local(self, peer: str, tree: str | None) -> None:
        """Forget the cursors and retries kept for ``peer`` (and ``tree``, if given);
        its metadata and history stay, as the record of the past."""
        cursors = self._local(_CURSORS)
        if tree is None:
            cursors.pop(peer, None)
        else:
            cursors.get(peer, {}).pop(tree, None)
        self._put_local(_CURSORS, cursors)
        retries = {
            retry_id: raw
            for retry_id, raw in self._local(RETRY).items()
            if not (
                _load(raw, RetryRecord, (RETRY, retry_id)).peer == peer
                and (tree is None or raw.get("tree") == tree)
            )
        }
        self._put_local(RETRY, retries)
