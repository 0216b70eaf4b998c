"""AtomicOp: the transaction that turns staged document writes into one signed entry."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from eidetica.errors import TransactionClosed, TreeNotFound
from eidetica.protocol import limits
from eidetica.protocol.entry import (
    SETTINGS_STORE,
    Entry,
    StoreWrite,
    check_store_name,
    create_entry,
)
from eidetica.storage.backend import EntryMeta
from eidetica.storage.crdt import encode_ops
from eidetica.storage.docstore import DocStore, StagedDoc

if TYPE_CHECKING:
    from eidetica.storage.tree import Tree


class _Phase(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class AtomicOp:
    """Writes staged against one tree. Use through ``async with tree.transaction()``."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.entry: Entry | None = None
        """The committed entry, once committed (``None`` if nothing was written)."""
        self._docs: dict[str, StagedDoc] = {}
        self._phase = _Phase.OPEN

    def doc(self, name: str) -> DocStore:
        """Document store ``name``, for staging writes and reading them back."""
        return self._staged(check_store_name(name))

    def settings(self) -> DocStore:
        """The tree's settings document; committing a change to it needs admin."""
        return self._staged(SETTINGS_STORE)

    def _staged(self, name: str) -> StagedDoc:
        if self._phase is not _Phase.OPEN:
            raise TransactionClosed(f"this transaction has {self._phase.value}")
        doc = self._docs.get(name)
        if doc is None:
            states = self.tree.instance.doc_states
            root = self.tree.root_id
            doc = self._docs[name] = StagedDoc(
                name, lambda: states.state(root, name), lambda: self._phase is _Phase.OPEN
            )
        return doc

    @property
    def is_open(self) -> bool:
        """Whether writes may still be staged (not yet committed or discarded)."""
        return self._phase is _Phase.OPEN

    def discard(self) -> None:
        """Drop everything staged; the transaction can no longer be used."""
        if self._phase is _Phase.OPEN:
            self._phase = _Phase.DISCARDED

    async def commit(self) -> Entry | None:
        """Sign and store the staged writes as one entry whose parents are the current
        tips, then run the commit hooks. A transaction that wrote nothing stores nothing."""
        if self._phase is not _Phase.OPEN:
            raise TransactionClosed(f"this transaction has {self._phase.value}")
        try:
            entry = await self._commit_locked()
        except BaseException:
            self._phase = _Phase.DISCARDED  # refused or cancelled: nothing was stored
            raise
        self._phase = _Phase.COMMITTED
        if entry is None:
            return None
        self.entry = entry
        self.tree.instance.run_hooks(self.tree, entry)
        return entry

    async def _commit_locked(self) -> Entry | None:
        instance = self.tree.instance
        root = self.tree.root_id
        async with instance.lock_for(root):
            if not any(doc.ops for doc in self._docs.values()):
                return None
            backend = instance.backend
            metas = backend.meta(backend.tips(root))
            if not metas:
                raise TreeNotFound(f"no tree with root {root!r} on this node")
            parents = _newest(metas.values())
            height = max(meta.height for meta in parents) + 1
            writes = []
            for name, doc in self._docs.items():
                if not doc.ops:
                    continue
                if name == SETTINGS_STORE:
                    store_parents = instance.settings_tips(parents)
                else:  # the store's tips, as far as they fit below the new entry
                    store_parents = tuple(
                        meta.id
                        for meta in _newest(backend.meta(backend.store_tips(root, name)).values())
                        if meta.height < height
                    )
                writes.append(StoreWrite(name, store_parents, encode_ops(doc.ops)))
            entry = create_entry(
                instance.device_key,
                tree=root,
                parents=[meta.id for meta in parents],
                height=height,
                stores=writes,
            )
            instance.store_local(self.tree, entry)
            return entry


def _newest(metas: Iterable[EntryMeta]) -> list[EntryMeta]:
    """At most ``MAX_PARENTS`` of ``metas``, the highest by (height, id).

    A commit merges every tip it can; past the limit it merges the newest, and the
    next commit merges more, so no number of concurrent branches blocks writing.
    """
    return sorted(metas, key=lambda meta: (meta.height, meta.id))[-limits.MAX_PARENTS :]
