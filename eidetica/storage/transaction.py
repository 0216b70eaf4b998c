"""AtomicOp: the transaction that turns staged document writes into one signed entry.

A transaction stages operations. Committing them is the node's part, handed in as
a :data:`Commit` (:meth:`~eidetica.storage.instance.Instance.commit`): under the
tree's lock it has :func:`staged_entry` build and sign their entry, stores it and
runs the commit hooks. So this module knows neither the tree nor the node, and
imports neither: the tree that makes transactions imports this module, and no
import runs back.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial

from eidetica.errors import TransactionClosed, TreeNotFound
from eidetica.protocol import limits
from eidetica.protocol.entry import (
    SETTINGS_STORE,
    Entry,
    StoreWrite,
    check_store_name,
    create_commit_entry,
)
from eidetica.protocol.keys import SigningKey
from eidetica.storage.backend import Backend, EntryMeta
from eidetica.storage.crdt import Op, Root, encode_ops
from eidetica.storage.docstore import DocStore, StagedDoc

Commit = Callable[[Mapping[str, Sequence[Op]]], Awaitable[Entry | None]]
"""Commits a transaction's staged operations (by store name) as one entry of its
tree, and returns it; ``None`` when nothing was staged."""

SettingsTips = Callable[[Iterable[EntryMeta]], tuple[str, ...]]
"""The settings tips of an entry with these (stored) parents."""


class _Phase(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class _Status:
    """A transaction's phase, shared with its staged documents, which ask it whether
    they may still stage. They hold this, not the transaction: a document holding its
    transaction would close a reference cycle, and every commit would leave its
    transaction for the garbage collector instead of freeing it at once."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = _Phase.OPEN

    def is_open(self) -> bool:
        return self.phase is _Phase.OPEN


class AtomicOp:
    """Writes staged against one tree. Use through ``async with tree.transaction()``.

    ``load(name)`` is the committed state of document store ``name``, read when the
    transaction first reads that store; ``commit`` stores what was staged.
    """

    def __init__(self, load: Callable[[str], Root], commit: Commit) -> None:
        self.entry: Entry | None = None
        """The committed entry, once committed (``None`` if nothing was written)."""
        self._load = load
        self._commit = commit
        self._docs: dict[str, StagedDoc] = {}
        self._status = _Status()

    def doc(self, name: str) -> DocStore:
        """Document store ``name``, for staging writes and reading them back."""
        return self._staged(check_store_name(name))

    def settings(self) -> DocStore:
        """The tree's settings document; committing a change to it needs admin."""
        return self._staged(SETTINGS_STORE)

    def _staged(self, name: str) -> StagedDoc:
        status = self._status
        if status.phase is not _Phase.OPEN:
            raise TransactionClosed(f"this transaction has {status.phase.value}")
        doc = self._docs.get(name)
        if doc is None:
            doc = self._docs[name] = StagedDoc(name, partial(self._load, name), status.is_open)
        return doc

    @property
    def is_open(self) -> bool:
        """Whether writes may still be staged (not yet committed or discarded)."""
        return self._status.is_open()

    def discard(self) -> None:
        """Drop everything staged; the transaction can no longer be used."""
        if self._status.phase is _Phase.OPEN:
            self._status.phase = _Phase.DISCARDED

    async def commit(self) -> Entry | None:
        """Sign and store the staged writes as one entry whose parents are the current
        tips, then run the commit hooks. A transaction that wrote nothing stores nothing."""
        status = self._status
        if status.phase is not _Phase.OPEN:
            raise TransactionClosed(f"this transaction has {status.phase.value}")
        staged = {name: tuple(doc.ops) for name, doc in self._docs.items() if doc.ops}
        try:
            entry = await self._commit(staged)
        except BaseException:
            status.phase = _Phase.DISCARDED  # refused or cancelled: nothing was stored
            raise
        status.phase = _Phase.COMMITTED
        self.entry = entry
        return entry


def staged_entry(
    backend: Backend,
    root: str,
    staged: Mapping[str, Sequence[Op]],
    *,
    key: SigningKey,
    settings_tips: SettingsTips,
) -> Entry:
    """The entry, signed with ``key``, that commits ``staged`` (operations by store
    name) to tree ``root`` on its current tips; call it under the tree's lock.

    Its parents are the tree's tips; each store's parents are that store's tips, as
    far as they fit below the new entry, and the settings' parents are the settings
    tips as of its parents.
    """
    metas = backend.meta(backend.tips(root))
    if not metas:
        raise TreeNotFound(f"no tree with root {root!r} on this node")
    parents = _newest(metas.values())
    height = max(meta.height for meta in parents) + 1
    writes = []
    for name, ops in staged.items():
        if name == SETTINGS_STORE:
            store_parents = settings_tips(parents)
        else:  # the store's tips, as far as they fit below the new entry
            store_parents = tuple(
                meta.id
                for meta in _newest(backend.meta(backend.store_tips(root, name)).values())
                if meta.height < height
            )
        writes.append(StoreWrite(name, store_parents, encode_ops(ops)))
    # the parents and the store parents are ids the backend holds
    return create_commit_entry(
        key, tree=root, parents=[meta.id for meta in parents], height=height, stores=writes
    )


def _newest(metas: Iterable[EntryMeta]) -> list[EntryMeta]:
    """At most ``MAX_PARENTS`` of ``metas``, the highest by (height, id).

    A commit merges every tip it can; past the limit it merges the newest, and the
    next commit merges more, so no number of concurrent branches blocks writing.
    """
    metas = list(metas)
    if len(metas) <= limits.MAX_PARENTS:
        return metas  # all of them: the order is the entry's to make
    return sorted(metas, key=lambda meta: (meta.height, meta.id))[-limits.MAX_PARENTS :]
