"""Tree: a handle on one Merkle-DAG this node holds, for reading and for transactions."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from eidetica.errors import EntryNotFound
from eidetica.protocol.auth import Permission, parse_permission, permission_of
from eidetica.protocol.entry import SETTINGS_STORE, Entry, check_store_name
from eidetica.protocol.keys import check_public_key
from eidetica.storage.changes import TreeChanges
from eidetica.storage.crdt import copy_value
from eidetica.storage.docstore import DocStore
from eidetica.storage.guard import require_trio
from eidetica.storage.transaction import AtomicOp

if TYPE_CHECKING:
    from eidetica.storage.instance import Instance


class Tree:
    """A tree, named by the id of its root entry. Cheap to make; holds no state."""

    __slots__ = ("instance", "root_id")

    def __init__(self, instance: Instance, root_id: str) -> None:
        self.instance = instance
        self.root_id = root_id

    async def tips(self) -> list[str]:
        """Ids of the entries no other entry builds on yet, sorted."""
        require_trio()
        return self.instance.backend.tips(self.root_id)

    async def doc(self, name: str) -> DocStore:
        """A snapshot of document store ``name`` (empty if nothing wrote to it)."""
        require_trio()
        check_store_name(name)
        return DocStore(name, self.instance.doc_states.view(self.root_id, name))

    async def settings(self) -> dict[str, Any]:
        """The tree's settings document as of its tips: ``name``, ``auth`` and more."""
        require_trio()
        result: dict[str, Any] = copy_value(
            self.instance.doc_states.state(self.root_id, SETTINGS_STORE)
        )
        return result

    async def permission(self, key: str) -> Permission | None:
        """The strongest permission ``key`` holds in this tree as of its tips, by name
        or through ``*``; None if it holds none. Reads the settings in place, without
        the copy :meth:`settings` makes: every push and every sync request asks this."""
        require_trio()
        return permission_of(self.instance.doc_states.state(self.root_id, SETTINGS_STORE), key)

    async def entry(self, entry_id: str) -> Entry:
        """One entry of this tree, or :class:`EntryNotFound`."""
        require_trio()
        entry = self.instance.backend.get(entry_id)
        if entry is None or entry.tree_id != self.root_id:
            raise EntryNotFound(f"tree {self.root_id} holds no entry {entry_id!r}")
        return entry

    async def voided(self) -> dict[str, str]:
        """Entries of this tree that do not count, each with the reason: which
        revocation of its author it does not build on, or which permission its author
        lacks under the settings that count. Such entries stay stored (others may build
        on them) but are left out of every document, settings included."""
        require_trio()
        return self.instance.voided(self.root_id)

    def changes(self) -> TreeChanges:
        """An async iterator of this tree's changes from now on, waking for this tree
        only: ``async for change in tree.changes():`` (each a
        :class:`~eidetica.storage.changes.TreeChange` with the tips). Changes that come
        while the loop body runs are folded into the next one."""
        instance = self.instance
        version = instance.tree_version(self.root_id)
        return TreeChanges(self.root_id, version, instance.tree_changed, instance.backend.tips)

    async def entries(self) -> list[Entry]:
        """Every entry of the tree, parents before children."""
        require_trio()
        return list(self.instance.backend.tree_entries(self.root_id))

    def transaction(self) -> AbstractAsyncContextManager[AtomicOp]:
        """Stage writes; a clean exit commits them as one signed entry, an error discards
        them. The entry's parents are the tips at commit time."""
        return _Transaction(self)

    async def grant(self, key: str, permission: str) -> None:
        """Give ``key`` (or ``"*"`` for anyone) ``read``, ``write`` or ``admin``."""
        require_trio()
        if key != "*":
            check_public_key(key)
        level = parse_permission(permission)
        async with self.transaction() as op:
            op.settings().set(("auth", key), level.label)

    async def revoke(self, key: str) -> None:
        """Take away whatever permission ``key`` was granted directly."""
        require_trio()
        async with self.transaction() as op:
            op.settings().delete(("auth", key))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and other.root_id == self.root_id

    def __hash__(self) -> int:
        return hash(self.root_id)

    def __repr__(self) -> str:
        return f"Tree({self.root_id[:16]}...)"


class _Transaction:
    """``async with tree.transaction() as op``: the transaction is made on entering,
    discarded if the block raises, and committed on a clean exit unless the block
    committed or discarded it itself.

    A class rather than an ``@asynccontextmanager``: entering and leaving a generator's
    context costs about five times as much, and every local commit pays it.
    """

    __slots__ = ("_op", "_tree")

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._op: AtomicOp | None = None

    async def __aenter__(self) -> AtomicOp:
        require_trio()
        if self._op is not None:
            raise RuntimeError("a transaction block is entered once")
        tree = self._tree
        instance = tree.instance
        self._op = AtomicOp(
            partial(instance.doc_states.view, tree.root_id), partial(instance.commit, tree)
        )
        return self._op

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        op = self._op
        assert op is not None, "left without being entered"
        if exc_type is not None:
            op.discard()
        elif op.is_open:
            await op.commit()
