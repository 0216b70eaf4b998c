"""Instance: one node's storage, device key, trees and commit hooks (the seed's BaseDB)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from eidetica.errors import (
    InvalidEntry,
    MissingParents,
    PermissionDenied,
    StorageError,
    SyncError,
    TreeNotFound,
    Voided,
)
from eidetica.protocol.auth import Permission, permission_of
from eidetica.protocol.entry import (
    SETTINGS_STORE,
    Entry,
    StoreWrite,
    create_entry,
    is_entry_id,
    read_entry,
)
from eidetica.protocol.hashchain import Authentication, named, unauthentic
from eidetica.protocol.intake import Intake, Rejection, signature_errors
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import ENTROPY_BYTES
from eidetica.protocol.randomness import Randomness
from eidetica.storage.backend import Backend, EntryMeta, Record
from eidetica.storage.crdt import Document, Op, SetOp, encode_ops
from eidetica.storage.device import load_or_create_device_key
from eidetica.storage.docstate import DocStates
from eidetica.storage.guard import require_trio
from eidetica.storage.judge import Judge
from eidetica.storage.live import Liveness
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.offload import WORKERS as OFFLOAD_WORKERS
from eidetica.storage.offload import check_entries
from eidetica.storage.settings import SettingsIndex
from eidetica.storage.sqlite import SqliteBackend
from eidetica.storage.transaction import staged_entry
from eidetica.storage.tree import Tree
from eidetica.storage.treeview import TreeView
from eidetica.storage.verify import BatchVerifier
from eidetica.storage.writer import Writer

log = logging.getLogger(__name__)

REFUSALS_REMEMBERED = 4096
"""Entry ids whose refusal was logged, so an entry offered again and again (by a peer
that resends what it was refused, or an older node that offers its dead entries) is
logged once, not every time."""

DATABASE_FILE = "eidetica.db"

VERIFY_SLICE = 32
"""Received entries verified against their tree in one step of the loop: about 1 ms.
A 1,024-entry page verified in one step held the loop for 40 ms."""

CommitHook = Callable[[Tree, Entry], None]
"""Called with the tree and the entry after every local commit. Hooks must be quick and
must not block: a sync hook only posts a notice. An exception is logged and ignored."""

SyncOpener = Callable[..., AbstractAsyncContextManager[Any]]
"""Opens the sync engine over an instance, for an ``async with`` block: called with
the instance and the options given to :meth:`Instance.sync`. The actors layer has one
(``eidetica.actors.sync.open_sync``); storage never imports it, so whoever builds the
instance hands it in."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of a batch of received entries."""

    stored: list[str]
    """Ids newly stored, parents first."""
    rejected: list[Rejection]
    held: int
    """Entries of the tree now waiting in the holding area for their parents."""
    missing: list[str]
    """Parents those held entries wait for."""
    stored_bytes: int = 0
    """Bytes of the entries newly stored."""


ReceiveHook = Callable[[str, "str | None", int, int], None]
"""Called with the tree, the sender's key (None: unknown), and the count and bytes of
the entries newly stored, after every batch received from elsewhere that stored some.
Like a commit hook, quick and never blocking; an exception is logged and ignored."""


class Instance:
    """A node's store of trees. Open one with :func:`open_instance`."""

    def __init__(
        self,
        backend: Backend,
        key: SigningKey,
        *,
        sync_opener: SyncOpener | None = None,
        randomness: Randomness | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.backend = backend
        self.device_key = key
        self.randomness = randomness if randomness is not None else Randomness.system()
        """Where this node draws its randomness: root entropy here, and in its sync
        engine nonces, tokens, ids and jitter (the system's unless a seeded one was
        given, for a simulation that must replay)."""
        self.wall_clock = wall_clock or time.time
        """Unix time as this node reads it: handshake timestamps and the times its sync
        engine records (``time.time`` unless a simulation gives one that follows trio's
        ``MockClock``, so a run replays whatever the machine's load)."""
        self.judge = Judge(backend)
        self.writer = Writer(backend)
        """Where every put runs: big batches in a worker thread, one write at a time."""
        self.doc_states = DocStates(backend, self.judge, busy=self.writer.busy)
        self.settings_index = SettingsIndex()
        self.intake = Intake()
        self._changed = trio.Event()
        self.version = 0
        """Counts the batches this node has stored; see :meth:`changed`."""
        self._refusals_logged: OrderedDict[str, None] = OrderedDict()
        self.liveness = Liveness(backend, self.judge)
        self._checkers = trio.CapacityLimiter(OFFLOAD_WORKERS)
        """Threads checking received entries at once, for all peers: one per core."""
        """Each tree's dead entries (voided, and nothing that counts builds on them),
        which this node keeps but does not offer when it syncs."""
        self._hooks: list[CommitHook] = []
        self._receive_hooks: list[ReceiveHook] = []
        self._tree_versions: dict[str, int] = {}
        self._tree_waiters: dict[str, trio.Event] = {}
        """One event per tree someone waits on (see :meth:`tree_changed`), set and
        dropped when that tree stores something: no entry for trees nobody watches."""
        self._locks: dict[str, trio.Lock] = {}
        self._sync_opener = sync_opener

    @property
    def public_key(self) -> str:
        """This node's device key, as ``ed25519:<base64>``."""
        return self.device_key.public_key

    async def create_tree(self, name: str, settings: dict[str, Any] | None = None) -> Tree:
        """A new tree named ``name`` whose only admin is this node's key."""
        require_trio()
        initial: Document = {**(settings or {}), "name": name}
        initial.setdefault("auth", {})[self.public_key] = "admin"
        ops = [SetOp((key,), value) for key, value in sorted(initial.items())]
        root = create_entry(
            self.device_key,
            tree=None,
            parents=(),
            height=0,
            stores=[StoreWrite(SETTINGS_STORE, (), encode_ops(ops))],
            entropy=self.randomness.random_bytes(ENTROPY_BYTES),
        )
        tree = Tree(self, root.id)
        await self._store_local(tree, root)
        self.run_hooks(tree, root)
        return tree

    async def open_tree(self, root_id: str) -> Tree:
        """A tree this node holds, or :class:`TreeNotFound` (also for an id that is
        not one: 64 lowercase hex digits)."""
        require_trio()
        if not is_entry_id(root_id):
            raise TreeNotFound(f"no tree with root {root_id!r}: not an entry id")
        meta = self.backend.meta([root_id]).get(root_id)
        if meta is None or meta.tree != root_id:
            raise TreeNotFound(f"no tree with root {root_id!r} on this node")
        return Tree(self, root_id)

    async def trees(self) -> list[Tree]:
        """Every tree this node holds, by root id."""
        require_trio()
        return [Tree(self, root_id) for root_id in self.backend.trees()]

    async def import_entries(self, items: Iterable[bytes | Entry]) -> list[str]:
        """Verify entries from elsewhere and store them in one batch; return new ids.

        Every entry is checked in full (bytes, authenticity, parents, permissions)
        first; if any fails, its typed error is raised and none of the batch is stored.
        An entry is authentic as :meth:`receive` has it (its signature verifies, or an
        authentic entry by its author in the batch, or stored, names it).
        """
        require_trio()
        entries = [read_entry(i.raw if isinstance(i, Entry) else i) for i in items]
        authentication = Authentication(entries)
        while pending := authentication.to_check():
            authentication.checked(zip(pending, signature_errors(pending), strict=True))
        failed = authentication.failed_entries()
        if failed:
            authentication.vouch(self.backend.has(entry.id for entry in failed))
            for error in authentication.failed.values():
                raise error
        async with contextlib.AsyncExitStack() as locks:
            for tree in sorted({entry.tree_id for entry in entries}):  # one order: no deadlock
                await locks.enter_async_context(self.lock_for(tree))
            records = self._verifier().verify(entries)
            added = await self.writer.put(records, self._on_stored)
        return added

    async def receive(
        self,
        tree: str,
        raws: Iterable[bytes],
        ids: Iterable[str | None] | None = None,
        *,
        source: str | None = None,
    ) -> Receipt:
        """Entries a peer sent for ``tree``: each is verified before it is stored.

        Unlike :meth:`import_entries`, a bad entry does not fail the batch: it is
        refused with its reason (and so are entries built on it) and the good ones are
        stored. Entries whose parents have not arrived wait in the holding area and
        are stored when they do; ``missing`` names the parents still awaited.
        ``source`` is the sender's proven key (None for unknown): what waits counts
        against that sender's quota in the holding area, so one peer's flood cannot
        push out what others sent.

        Each entry's own checks run in worker threads (:mod:`eidetica.storage.offload`);
        the rest runs under the tree's lock, so batches received at once for one tree,
        and its local commits, are held, verified and stored one after the other.
        Storing runs in the node's :class:`~eidetica.storage.writer.Writer`.
        """
        require_trio()
        claims = None if ids is None else list(ids)
        valid, rejected = await check_entries(
            tree,
            list(raws),
            claims,
            limiter=self._checkers,
            vouched=lambda failed: self._vouched(tree, failed),
        )
        lock = self.lock_for(tree)
        if lock.locked():
            await lock.acquire()
        else:  # a push of one entry to a tree nobody writes: no trip round the scheduler
            lock.acquire_nowait()
        try:
            with trio.CancelScope(shield=True):  # what was released is stored or refused
                receipt = await self._take(tree, valid, rejected, source)
        finally:
            lock.release()
        return receipt

    async def _take(
        self, tree: str, valid: list[Entry], rejected: list[Rejection], source: str | None
    ) -> Receipt:
        """The rest of :meth:`receive`, under the tree's lock: hold, verify against the
        tree (letting the loop run other tasks every :data:`VERIFY_SLICE` entries),
        store. Shielded from cancellation: entries taken out of the holding area must
        not be dropped half-way, and the work is bounded by a page."""
        ready = self._ready_at_once(tree, valid)
        if ready is None:
            self.intake.hold(valid, source=source)
            ready = self.intake.release(tree, self.backend.has)
        verifier = self._verifier()
        records = []
        refused: set[str] = set()
        for index, entry in enumerate(ready):
            if index % VERIFY_SLICE == VERIFY_SLICE - 1:
                await trio.lowlevel.checkpoint()
            try:
                if refused.intersection(entry.parents):
                    raise MissingParents(f"entry {entry.id} builds on a refused entry", frozenset())
                records.append(verifier.check(entry, tree))
            except InvalidEntry as exc:
                refused.add(entry.id)
                rejected.append(Rejection(entry.id, exc))
        records = self._without_spam(tree, verifier, records, rejected)
        records = self._authentic_as_stored(tree, records, rejected, source)
        stored = await self.writer.put(records, self._on_stored)
        new = set(stored)
        stored_bytes = sum(len(r.entry.raw) for r in records if r.entry.id in new)
        if stored:
            self._run_receive_hooks(tree, source, len(stored), stored_bytes)
        self._log_refusals(tree, rejected)
        return Receipt(
            stored=stored,
            rejected=rejected,
            held=self.intake.held(tree),
            missing=sorted(self.intake.missing(tree, self.backend.has)),
            stored_bytes=stored_bytes,
        )

    def _authentic_as_stored(
        self, tree: str, records: list[Record], rejected: list[Rejection], source: str | None
    ) -> list[Record]:
        """The records, less any that would be stored unauthentic
        (:func:`~eidetica.protocol.hashchain.unauthentic`): vouched for on arrival only
        by entries not stored with them, with a signature that fails. One that a held
        entry still vouches for goes back to the holding area, to be stored with its
        voucher; any other is refused. What builds on it waits or is refused with it.
        Dropping an entry drops what it vouched for through what builds on it, so this
        goes on until nothing drops."""
        while failed := unauthentic([record.entry for record in records]):
            failing = [record.entry for record in records if record.entry.id in failed]
            held_voucher = self.intake.vouched(tree, failing)
            waits: set[str] = set()
            refused: set[str] = set()
            kept: list[Record] = []
            for record in records:
                entry = record.entry
                names = set(named(entry))
                if entry.id in failed and entry.id in held_voucher:
                    waits.add(entry.id)
                elif entry.id in failed:
                    refused.add(entry.id)
                    rejected.append(Rejection(entry.id, failed[entry.id]))
                elif refused & names:
                    refused.add(entry.id)
                    reason = f"entry {entry.id} builds on a refused entry"
                    rejected.append(Rejection(entry.id, MissingParents(reason, frozenset())))
                elif waits & names:
                    waits.add(entry.id)
                else:
                    kept.append(record)
            self.intake.hold([r.entry for r in records if r.entry.id in waits], source=source)
            records = kept
        return records

    def _vouched(self, tree: str, failed: Sequence[Entry]) -> set[str]:
        """Which received entries, each failing its own signature check, are authentic
        anyway: stored already (the same bytes were accepted before), or named by a
        held entry of ``tree`` by the same author. So an entry refused alone is taken
        when it comes again after its child (whose missing parent it is)."""
        return self.backend.has(entry.id for entry in failed) | self.intake.vouched(tree, failed)

    def _ready_at_once(self, tree: str, entries: Sequence[Entry]) -> list[Entry] | None:
        """The new entries of a batch, parents first, if each one's parents are stored
        or come earlier in it and nothing of ``tree`` waits in the holding area: then
        the batch (a pull's page, in order) skips the holding area. None otherwise."""
        if self.intake.held(tree):
            return None
        batch = {e.id: e for e in entries}
        ordered = sorted(batch.values(), key=lambda e: (e.height, e.id))
        outside = {p for e in ordered for p in e.parents if p not in batch}
        present = set(self.backend.has([*batch, *outside]))  # ours to add to
        fresh: list[Entry] = []
        for entry in ordered:
            if entry.id in present:
                continue  # stored already
            if not all(parent in present for parent in entry.parents):
                return None
            present.add(entry.id)
            fresh.append(entry)
        return fresh

    def _log_refusals(self, tree: str, rejected: Sequence[Rejection]) -> None:
        """One warning per refused entry; again only at debug level, while remembered."""
        for rejection in rejected:
            again = rejection.id is not None and rejection.id in self._refusals_logged
            level = logging.DEBUG if again else logging.WARNING
            log.log(level, "refused entry %s for tree %s: %s", rejection.id, tree, rejection.reason)
            if rejection.id is not None and not again:
                self._refusals_logged[rejection.id] = None
                if len(self._refusals_logged) > REFUSALS_REMEMBERED:
                    self._refusals_logged.popitem(last=False)

    def _without_spam(
        self, tree: str, verifier: BatchVerifier, records: list[Record], rejected: list[Rejection]
    ) -> list[Record]:
        """Drop the entries that do not count and that nothing offered builds on.

        A revoked key could otherwise fill a node that already knows of its revocation.
        Those that something offered builds on are kept (not counted): without every
        parent, the nodes could never hold the same entries.
        """
        if not verifier.voided:
            return records
        needed = self._needed_by_writers(tree)
        kept: list[Record] = []
        for record in reversed(records):
            entry = record.entry
            reason = verifier.voided.get(entry.id)
            if reason is None or entry.id in needed:
                needed.update(entry.parents)
                kept.append(record)
            else:
                rejected.append(Rejection(entry.id, Voided(f"entry {entry.id}: {reason}")))
        kept.reverse()
        return kept

    def _needed_by_writers(self, tree: str) -> set[str]:
        """Parents that held entries wait for, counting only entries whose author may
        write now: anyone can sign an entry that names a revoked key's chain and a
        parent that never comes, and must not thereby get that chain stored."""
        verdict = self.judge.of_tree(tree)
        settings = self.doc_states.state(tree, SETTINGS_STORE)
        return {
            parent
            for entry in self.intake.waiting(tree)
            if (permission_of(settings, entry.author) or 0) >= Permission.WRITE
            and not verdict.suspect(entry)
            for parent in entry.parents
        }

    def voided(self, tree: str) -> dict[str, str]:
        """Stored entries of ``tree`` that do not count, each with the reason (which
        revocation voided it, or which permission it lacks)."""
        return self.judge.voided(tree)

    def sync_tips(self, tree: str) -> list[str]:
        """The tips this node names when it syncs ``tree``: its tips, its dead entries
        left out (:mod:`eidetica.storage.live`)."""
        return list(self.liveness.of(tree).tips)

    def sync_view(self, tree: str) -> TreeView:
        """``tree`` as the sync planner sees it here: without its dead entries."""
        return TreeView(self.backend, tree, self.liveness.of(tree))

    def _verifier(self) -> BatchVerifier:
        return BatchVerifier(self.backend, self.settings_index, self.judge)

    def settings_tips(self, parents: Iterable[EntryMeta]) -> tuple[str, ...]:
        """The settings tips of an entry with these (stored) parents."""
        lookup = self._verifier().lookup
        return self.settings_index.tips_as_of([m.settings_head for m in parents], lookup)

    async def _store_local(self, tree: Tree, entry: Entry) -> None:
        """Verify and store an entry this node just signed. Its signature is not checked
        again, so only this node's own entries may come this way."""
        if entry.author != self.public_key:
            raise PermissionDenied(f"{entry.author} is not this node's key; use receive()")
        record = self._verifier().check(entry, tree.root_id)
        await self.writer.put([record], self._on_stored)

    def _on_stored(self, records: Sequence[Record], added: list[str]) -> None:
        """What the writer made visible: fold it into the documents, wake watchers."""
        for record in records:
            self.doc_states.stored(record.entry)
        if added:
            self._stored({record.entry.tree_id for record in records})

    async def commit(self, tree: Tree, staged: Mapping[str, Sequence[Op]]) -> Entry | None:
        """Sign ``staged`` (operations by store name) as one entry of ``tree`` on its
        current tips, store it, then run the commit hooks: what a transaction does on a
        clean exit. Commits on one tree are serialized by its lock; nothing staged,
        nothing stored."""
        require_trio()
        async with self.lock_for(tree.root_id):
            if not staged:
                return None
            entry = staged_entry(
                self.backend,
                tree.root_id,
                staged,
                key=self.device_key,
                settings_tips=self.settings_tips,
            )
            await self._store_local(tree, entry)
        self.run_hooks(tree, entry)
        return entry

    async def changed(self, since: int | None = None) -> int:
        """Wait until this node has stored entries (its own commits, or received)
        after :attr:`version` was ``since`` (default: now); return the new version.
        Passing the version read before a check makes the wait miss nothing."""
        require_trio()
        target = self.version if since is None else since
        while self.version <= target:
            await self._changed.wait()
        return self.version

    def tree_version(self, root_id: str) -> int:
        """Counts the batches this node has stored in one tree since it opened."""
        return self._tree_versions.get(root_id, 0)

    async def tree_changed(self, root_id: str, since: int) -> int:
        """Wait until tree ``root_id`` has stored entries after its
        :meth:`tree_version` was ``since``; return its new version. Wakes for that
        tree only."""
        require_trio()
        while self.tree_version(root_id) <= since:
            waiter = self._tree_waiters.get(root_id)
            if waiter is None:
                waiter = self._tree_waiters[root_id] = trio.Event()
            await waiter.wait()
        return self.tree_version(root_id)

    def _stored(self, trees: Iterable[str]) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        for tree in trees:
            self._tree_versions[tree] = self._tree_versions.get(tree, 0) + 1
            waiter = self._tree_waiters.pop(tree, None)
            if waiter is not None:
                waiter.set()

    def lock_for(self, root_id: str) -> trio.Lock:
        """The lock that serializes commits on one tree."""
        lock = self._locks.get(root_id)
        if lock is None:
            lock = self._locks[root_id] = trio.Lock()
        return lock

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Run ``hook`` after every local commit from now on."""
        self._hooks.append(hook)

    def remove_commit_hook(self, hook: CommitHook) -> None:
        """Stop running ``hook``."""
        self._hooks.remove(hook)

    def add_receive_hook(self, hook: ReceiveHook) -> None:
        """Run ``hook`` after every received batch that stored entries, from now on."""
        self._receive_hooks.append(hook)

    def remove_receive_hook(self, hook: ReceiveHook) -> None:
        """Stop running ``hook``."""
        self._receive_hooks.remove(hook)

    def _run_receive_hooks(self, tree: str, source: str | None, count: int, size: int) -> None:
        for hook in list(self._receive_hooks):
            try:
                hook(tree, source, count, size)
            except Exception:
                log.exception("receive hook %r failed for tree %s", hook, tree)

    def run_hooks(self, tree: Tree, entry: Entry) -> None:
        """Run every commit hook; a failure is logged, never raised."""
        for hook in list(self._hooks):
            try:
                hook(tree, entry)
            except Exception:
                log.exception("commit hook %r failed for entry %s", hook, entry.id)

    def sync(self, **options: Any) -> AbstractAsyncContextManager[Any]:
        """The sync engine over this node, for an ``async with`` block (see
        ``eidetica.actors.sync.open_sync`` for the options): the one this instance
        was built with, as ``eidetica.open_instance`` builds every instance."""
        if self._sync_opener is None:
            raise SyncError(
                "this instance was built without a sync engine: open it with"
                " eidetica.open_instance, or run eidetica.open_sync(instance)"
            )
        return self._sync_opener(self, **options)

    def healthy(self) -> bool:
        """Whether this node's storage is open and answers."""
        return self.backend.healthy()

    def close(self) -> None:
        """Snapshot the documents read since their last snapshot, then close storage:
        the next open reads them without refolding their history."""
        try:
            self.doc_states.persist()
        finally:
            self.backend.close()


@asynccontextmanager
async def open_instance(
    path: str | os.PathLike[str] | None,
    *,
    sync_opener: SyncOpener | None = None,
    randomness: Randomness | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Instance]:
    """Open the node stored in directory ``path`` (SQLite), or an in-memory one for None.

    The directory and its device key are created on first open and reused after.
    ``sync_opener`` is what the instance's :meth:`~Instance.sync` opens (none: it
    raises); ``eidetica.open_instance`` passes the engine's. ``randomness`` is where
    the node draws its keys, entropy, nonces and jitter (default: the system's; a
    seeded one replays a simulation and is insecure). ``wall_clock`` is the node's Unix
    time (default ``time.time``; a simulation's follows its ``MockClock``).
    """
    require_trio()
    instance = _open(path, sync_opener, randomness or Randomness.system())
    if wall_clock is not None:
        instance.wall_clock = wall_clock
    try:
        yield instance
    finally:
        instance.close()


def _open(
    path: str | os.PathLike[str] | None, sync_opener: SyncOpener | None, randomness: Randomness
) -> Instance:
    if path is None:
        backend: Backend = MemoryBackend()
        key = randomness.signing_key()
    else:
        directory = Path(path)
        _private_directory(directory)
        if randomness.is_seeded:
            log.warning(
                "data directory %s is opened with seeded randomness: its keys and nonces"
                " follow from the seed, so it is fit for simulations only",
                directory,
            )
        key = load_or_create_device_key(directory, new_key=randomness.signing_key)
        backend = SqliteBackend(directory / DATABASE_FILE)
    return Instance(backend, key, sync_opener=sync_opener, randomness=randomness)


def _private_directory(directory: Path) -> None:
    """Create the data directory owner-only (0700), or make an existing one so.

    Its files are owner-only too, but a directory others can list tells them which
    files are there, and one they can enter lets them read any file that is ever left
    wider; so a directory of this user's that others could enter or list is tightened,
    with one warning. A directory of another user's (``/tmp``, someone's home) that is
    open to others is not changed but refused: making it private is its owner's call.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
        mode = stat.S_IMODE(status.st_mode)
        if not mode & 0o077:
            return
        if status.st_uid != os.geteuid():
            raise StorageError(
                f"data directory {directory} belongs to uid {status.st_uid} and others may"
                f" read it (mode {mode:o}): use a directory of your own"
            )
        directory.chmod(0o700)
    except OSError as exc:
        raise StorageError(f"cannot open data directory {directory}: {exc}") from exc
    log.warning(
        "others could read data directory %s (mode %o): tightened it to 700", directory, mode
    )
