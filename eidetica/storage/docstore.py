"""DocStore: the nested key/value document users read and write.

A :class:`DocStore` from ``await tree.doc(name)`` is a snapshot: later commits do not
change it. Inside a transaction, ``op.doc(name)`` gives a :class:`DocStore` whose
``set`` and ``delete`` are staged in the transaction and visible to its own ``get``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eidetica.errors import TransactionClosed
from eidetica.storage.crdt import (
    MISSING,
    DeleteOp,
    Document,
    Op,
    Owned,
    Root,
    SetOp,
    apply_to_root,
    check_set,
    copy_value,
    lookup,
    materialized,
    parse_path,
)

PathLike = str | Sequence[str]


class DocStore:
    """A document: ``get`` like ``dict.get`` over dotted paths; ``set``/``delete`` only
    inside a transaction."""

    def __init__(self, name: str, state: Root) -> None:
        self.name = name
        self._state = state

    def get(self, path: PathLike, default: Any = None) -> Any:
        """The value at ``path`` (a copy), or ``default`` if it is missing or deleted."""
        value = lookup(self._state, parse_path(path))
        return default if value is MISSING else copy_value(value)

    def __contains__(self, path: PathLike) -> bool:
        return lookup(self._state, parse_path(path)) is not MISSING

    def to_dict(self) -> Document:
        """The whole document, as a fresh dict."""
        result: Document = copy_value(materialized(self._state))
        return result

    def set(self, path: PathLike, value: Any) -> None:
        """Stage ``value`` at ``path``; only inside a transaction."""
        raise TransactionClosed("documents are read-only outside a transaction")

    def delete(self, path: PathLike) -> None:
        """Stage the removal of ``path``; only inside a transaction."""
        raise TransactionClosed("documents are read-only outside a transaction")

    def __repr__(self) -> str:
        return f"DocStore({self.name!r})"


class StagedDoc(DocStore):
    """A document inside a transaction: writes are recorded as operations.

    The committed state is loaded only when the transaction first reads, and is shared
    with the cache: staged writes copy only the dicts on their paths.
    """

    def __init__(self, name: str, load: Callable[[], Root], is_open: Callable[[], bool]):
        super().__init__(name, {})
        self._load = load
        self._is_open = is_open
        self._owned: Owned | None = None  # set once the committed state is loaded
        self.ops: list[Op] = []

    def get(self, path: PathLike, default: Any = None) -> Any:
        self._materialize()
        return super().get(path, default)

    def __contains__(self, path: PathLike) -> bool:
        self._materialize()
        return super().__contains__(path)

    def to_dict(self) -> Document:
        self._materialize()
        return super().to_dict()

    def set(self, path: PathLike, value: Any) -> None:
        segments = parse_path(path)
        check_set(segments, value)
        self._stage(SetOp(segments, copy_value(value)))

    def delete(self, path: PathLike) -> None:
        self._stage(DeleteOp(parse_path(path)))

    def _stage(self, op: Op) -> None:
        if not self._is_open():
            raise TransactionClosed(f"the transaction writing {self.name!r} has ended")
        self.ops.append(op)
        if self._owned is not None:
            self._state = apply_to_root(self._state, [op], self._owned)

    def _materialize(self) -> None:
        if self._owned is None:
            self._owned = {}
            self._state = apply_to_root(self._load(), self.ops, self._owned)
