"""The document operations and their fold, without any tree around them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eidetica.errors import MalformedEntry
from eidetica.storage.crdt import (
    DeleteOp,
    Document,
    Op,
    Owned,
    SetOp,
    apply_ops,
    copy_value,
    decode_ops,
    encode_ops,
    parse_path,
)


def fold(*ops: Op) -> Document:
    state: Document = {}
    apply_ops(state, ops)
    return state


def test_set_creates_and_replaces_along_the_path() -> None:
    assert fold(SetOp(("a", "b"), 1)) == {"a": {"b": 1}}
    assert fold(SetOp(("a",), 5), SetOp(("a", "b"), 1)) == {"a": {"b": 1}}
    assert fold(SetOp(("a", "b"), 1), SetOp(("a",), [1])) == {"a": [1]}


def test_delete_is_a_tombstone_that_a_later_set_overrides() -> None:
    assert fold(SetOp(("a",), 1), DeleteOp(("a",))) == {}
    assert fold(SetOp(("a",), 1), DeleteOp(("a",)), SetOp(("a",), 2)) == {"a": 2}
    assert fold(DeleteOp(("x", "y"))) == {}
    assert fold(SetOp(("x",), 1), DeleteOp(("x", "y"))) == {"x": 1}


def test_dotted_paths_split_on_dots() -> None:
    assert parse_path("a.b.c") == ("a", "b", "c")
    assert parse_path(["a.b", "c"]) == ("a.b", "c")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
paths = st.lists(st.sampled_from(["a", "b", "c.d"]), min_size=1, max_size=3).map(tuple)
ops = st.lists(
    st.one_of(st.builds(SetOp, paths, json_values), st.builds(DeleteOp, paths)), max_size=8
)


@given(ops=ops)
def test_ops_round_trip_through_bytes(ops: list[Op]) -> None:
    assert fold(*decode_ops(encode_ops(ops))) == fold(*ops)


@given(value=json_values)
def test_copies_are_equal_and_independent(value: Any) -> None:
    copied = copy_value(value)
    assert copied == value
    if isinstance(copied, dict | list) and copied:
        assert copied is not value


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        encode_ops([SetOp((), 1)]),
        encode_ops([SetOp(("a", ""), 1)]),
        b"\x91\x93\xa1s\x91\xa1a\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # a NaN value
        b"\x91\x92\xa1x\x91\xa1a",  # unknown op tag
        b"\x91" * 5000,  # nested too deep
        b"\x91\x94\xa1s\x91\xa1a\x01\x02",  # an extra field in an operation
        b"\x91\x93\xa1s\x91\xa1a\xcd\x00\x01",  # 1 written as a 16-bit integer
        b"\x91\x93\xa1s\x91\xa1a\xca\x3f\x80\x00\x00",  # 1.0 written as float32
        b"\x91\x93\xa1s\x91\xa1a\x82\xa1k\x01\xa1k\x02",  # a map repeating a key
    ],
    ids=[
        "not-a-list",
        "empty-path",
        "empty-segment",
        "nan",
        "unknown-tag",
        "deep",
        "extra-field",
        "wide-int",
        "float32",
        "repeated-key",
    ],
)
def test_invalid_document_data_is_typed_error(data: bytes) -> None:
    with pytest.raises(MalformedEntry):
        decode_ops(data)


@given(batches=st.lists(ops, max_size=6))
def test_copy_on_write_never_changes_a_shared_state(batches: list[list[Op]]) -> None:
    state: Document = {}
    owned: Owned = {}
    shared: list[tuple[Document, Document]] = []
    for batch in batches:
        state = apply_ops(state, batch, owned)
        shared.append((state, copy_value(state)))  # hand the state out...
        owned.clear()  # ...so nothing in it may change in place any more
    for handed_out, as_it_was in shared:
        assert handed_out == as_it_was
    assert state == fold(*(op for batch in batches for op in batch))


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_path_and_value_together_bound_the_depth() -> None:
    assert decode_ops(encode_ops([SetOp(("a",), nested(63))]))
    assert decode_ops(encode_ops([SetOp(("a",) * 64, 1)]))
    for too_deep in [
        SetOp(("a",), nested(64)),
        SetOp(("a",) * 65, 1),
        SetOp(("a",) * 32, nested(33)),
    ]:
        with pytest.raises(MalformedEntry, match=r"deeper|segments"):
            decode_ops(encode_ops([too_deep]))
    with pytest.raises(MalformedEntry):
        decode_ops(encode_ops([DeleteOp(("a",) * 100_000)]))
