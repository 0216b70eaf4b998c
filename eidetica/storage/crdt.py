"""The document CRDT: operations, their encoding, and the deterministic fold.

A document store's data in an entry is a list of operations (set a path to a value,
delete a path). A document's state is every operation of every entry of the store,
applied in the entries' (height, id) order. Height grows along every parent link, so
causal order is kept; ties between concurrent entries break by id, the same way on
every node. The state therefore depends only on which entries a node holds, never on
the order they arrived in, and two forks that both created a store simply merge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from eidetica.errors import InvalidPath, InvalidValue, MalformedEntry
from eidetica.protocol import limits
from eidetica.protocol.entry import DECODE_ERRORS
from eidetica.storage.shards import Shards

Path = tuple[str, ...]
Document = dict[str, Any]
Root = Document | Shards
"""A folded document as a fold keeps it: one dict, or its top level in
:class:`~eidetica.storage.shards.Shards` (once the fold has been snapshotted, or
resumed from a snapshot)."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


class SetOp(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="s"):
    """Set the value at ``path``, replacing whatever was there (or on the way)."""

    path: Path
    value: Any


class DeleteOp(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag="d"):
    """Remove the value at ``path``; a later set brings it back."""

    path: Path


Op = SetOp | DeleteOp

_ENCODER = msgspec.msgpack.Encoder()
_OPS_DECODER = msgspec.msgpack.Decoder(list[Op])
_ANY_DECODER = msgspec.msgpack.Decoder()


def parse_path(path: str | Sequence[str]) -> Path:
    """A dotted string (``"a.b"``) or a sequence of segments, as a tuple of segments."""
    segments = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    if not segments or any(not isinstance(s, str) or not s for s in segments):
        raise InvalidPath(f"a path needs one or more non-empty segments: {path!r}")
    if len(segments) > limits.MAX_DOC_DEPTH:
        raise InvalidPath(f"a path has at most {limits.MAX_DOC_DEPTH} segments")
    return segments


def check_set(path: Path, value: Any) -> None:
    """Raise unless setting ``value`` at ``path`` keeps the document within
    ``MAX_DOC_DEPTH`` levels: the path's segments and the value's nesting add up, so
    no document, however many writes built it, can nest deeper than the limit."""
    check_value(value, depth=len(path))


def check_value(value: Any, depth: int = 0) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is JSON-like and can be stored.

    Floats must be finite, because NaN has many bit patterns and would make equal
    documents encode differently.
    """
    if depth > limits.MAX_DOC_DEPTH:
        raise InvalidValue(f"value nests deeper than {limits.MAX_DOC_DEPTH}")
    match value:
        case None | bool() | str():
            return
        case int():
            if not _INT_MIN <= value <= _INT_MAX:
                raise InvalidValue(f"integer {value} does not fit in 64 bits")
        case float():
            if not math.isfinite(value):
                raise InvalidValue(f"float {value} is not finite")
        case list() | tuple():
            for item in value:
                check_value(item, depth + 1)
        case dict():
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidValue(f"document keys must be strings, got {key!r}")
                check_value(item, depth + 1)
        case _:
            raise InvalidValue(f"cannot store a {type(value).__name__} in a document")


def copy_value(value: Any) -> Any:
    """A deep copy of a JSON-like value (tuples become lists, as they would on disk)."""
    return _ANY_DECODER.decode(_ENCODER.encode(value))


def encode_ops(ops: Sequence[Op]) -> bytes:
    """The bytes a store write carries for these operations."""
    return _ENCODER.encode(list(ops))


def decode_ops(data: bytes) -> list[Op]:
    """The operations in a store write, or :class:`MalformedEntry` if they are not valid.

    Like entries, store data must be canonical (it re-encodes to the same bytes), so
    every implementation reads the same values from it or rejects it alike.
    """
    try:
        ops = _OPS_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        raise MalformedEntry(f"document data does not decode: {exc}") from exc
    try:
        for op in ops:
            parse_path(op.path)
            if isinstance(op, SetOp):
                check_set(op.path, op.value)
    except (InvalidPath, InvalidValue) as exc:
        raise MalformedEntry(f"document data holds an invalid operation: {exc}") from exc
    if encode_ops(ops) != data:
        raise MalformedEntry("document data is not in canonical form")
    return ops


def apply_ops(state: Document, ops: Iterable[Op], owned: Owned | None = None) -> Document:
    """Apply operations in order and return the resulting document.

    Without ``owned``, ``state`` is changed in place and returned. With it, only the
    dicts in ``owned`` may be changed in place: any other dict on an operation's path is
    shared with a snapshot, so it is copied (shallowly) first and the copy is owned from
    then on. A changed root comes back as a new dict.
    """
    if owned is not None:
        state = _owned(state, owned)
    for op in ops:
        _apply(state, op, owned)
    return state


def apply_to_root(state: Root, ops: Iterable[Op], owned: Owned | None = None) -> Root:
    """:func:`apply_ops` on a root that may be in shards: each operation applies to
    the shard holding its first segment, which is a dict of top-level keys like the
    document itself. A changed root in shards comes back as a new
    :class:`~eidetica.storage.shards.Shards` when ``owned`` is given."""
    if isinstance(state, dict):
        return apply_ops(state, ops, owned)
    if owned is not None and id(state) not in owned:
        state = state.copy()
        owned[id(state)] = state
    for op in ops:
        _apply(state.writable(op.path[0], owned), op, owned)
    return state


def _apply(state: Document, op: Op, owned: Owned | None) -> None:
    *parents, leaf = op.path
    node = state
    if isinstance(op, SetOp):
        for segment in parents:
            child = node.get(segment)
            if not isinstance(child, dict):
                child = {}
                if owned is not None:
                    owned[id(child)] = child
            elif owned is not None:
                child = _owned(child, owned)
            node[segment] = child
            node = child
        node[leaf] = copy_value(op.value)
    else:
        for segment in parents:
            child = node.get(segment)
            if not isinstance(child, dict):
                break
            if owned is not None:
                child = node[segment] = _owned(child, owned)
            node = child
        else:
            node.pop(leaf, None)


Owned = dict[int, Document | Shards]
"""The dicts (and shards) a copy-on-write fold may change in place, by id (holding
them keeps ids unique)."""


def _owned(node: Document, owned: Owned) -> Document:
    if id(node) in owned:
        return node
    copy = dict(node)
    owned[id(copy)] = copy
    return copy


def materialized(state: Root) -> Document:
    """``state`` as one dict: itself, or its shards merged (sharing their values)."""
    return state if isinstance(state, dict) else state.to_dict()


def lookup(state: Root, path: Path) -> Any:
    """The value at ``path`` (not a copy), or :data:`MISSING`."""
    if not path or isinstance(state, dict):
        node: Any = materialized(state)
    else:
        node = state.read(path[0])  # the shard is a dict of the top-level keys in it
    for segment in path:
        if not isinstance(node, dict) or segment not in node:
            return MISSING
        node = node[segment]
    return node


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
