"""A document's top level in shards reads and folds exactly as the one dict would."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eidetica.errors import StorageError
from eidetica.storage import shards as shards_module
from eidetica.storage.crdt import (
    MISSING,
    DeleteOp,
    Document,
    Op,
    Owned,
    Root,
    SetOp,
    apply_to_root,
    copy_value,
    lookup,
    materialized,
)
from eidetica.storage.docstore import StagedDoc
from eidetica.storage.shards import Shards, shard_count, shard_of
from tests.storage.test_crdt import fold, json_values

top_keys = st.sampled_from(["a", "b", "c", "k1", "k2", "k10", "ü", "a.b", "x" * 40])
paths = st.lists(top_keys | st.sampled_from(["a", "z"]), min_size=1, max_size=3).map(tuple)
ops = st.lists(
    st.one_of(st.builds(SetOp, paths, json_values), st.builds(DeleteOp, paths)), max_size=8
)


def resumed(document: Document) -> Shards:
    """``document`` in shards as a snapshot holds them: encoded, none decoded yet."""
    return Shards.from_encoded(Shards.partition(document).encoded())


@pytest.fixture(autouse=True)
def many_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """One key per shard, so the few keys a test writes spread over several shards."""
    monkeypatch.setattr(shards_module, "KEYS_PER_SHARD", 1)


def test_the_shard_count_is_a_power_of_two_for_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [shard_count(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
    monkeypatch.setattr(shards_module, "KEYS_PER_SHARD", 64)
    assert shard_count(100_000) == 2048
    assert shard_count(10**9) == shards_module.MAX_SHARDS


def test_a_key_falls_in_its_shard_in_every_process() -> None:
    """Shards outlive the process, so the hash is fixed: CRC-32 of the UTF-8 key."""
    assert [shard_of(key, 1024) for key in ("k1", "k99999", "ü")] == [169, 75, 469]


@given(batches=st.lists(ops, max_size=6), first=ops)
def test_folding_onto_shards_reads_what_folding_onto_a_dict_reads(
    batches: list[list[Op]], first: list[Op]
) -> None:
    """A state resumed from a snapshot in shards, then folded copy-on-write with reads
    handed out between batches, reads at every path what the one dict reads; no state
    handed out changes afterwards; and the shards encode back to the same document."""
    state: Root = resumed(fold(*first))
    owned: Owned = {}
    shared: list[tuple[Root, Document]] = []
    for batch in batches:
        state = apply_to_root(state, batch, owned)
        shared.append((state, copy_value(materialized(state))))
        owned.clear()
    expected = fold(*first, *(op for batch in batches for op in batch))
    assert materialized(state) == expected
    for op in (op for batch in [first, *batches] for op in batch):
        assert lookup(state, op.path) == lookup(expected, op.path)
    for handed_out, as_it_was in shared:
        assert materialized(handed_out) == as_it_was
    assert isinstance(state, Shards)
    assert resumed(materialized(state)).to_dict() == Shards.from_encoded(state.encoded()).to_dict()


def test_a_read_decodes_only_the_shard_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "KEYS_PER_SHARD", 4)
    state = resumed({f"k{i}": i for i in range(100)})
    assert (state.count, state.loaded) == (32, 0)
    assert lookup(state, ("k42",)) == 42
    assert lookup(state, ("k42", "deeper")) is MISSING
    assert state.loaded == 1
    assert lookup(state, ("k100",)) is MISSING
    assert state.loaded <= 2


def test_a_write_copies_one_shard_and_changes_nothing_shared() -> None:
    shared = resumed({"a": {"x": 1}, "b": 2, "c": 3})
    owned: Owned = {}
    written = apply_to_root(shared, [SetOp(("a", "y"), 2)], owned)
    assert written is not shared
    assert isinstance(written, Shards)
    assert written.loaded == 1
    assert shared.to_dict() == {"a": {"x": 1}, "b": 2, "c": 3}
    assert written.to_dict() == {"a": {"x": 1, "y": 2}, "b": 2, "c": 3}


@pytest.mark.parametrize("count", [0, 3, 6, shards_module.MAX_SHARDS * 2])
def test_shards_of_a_count_not_a_power_of_two_in_bounds_are_refused(count: int) -> None:
    with pytest.raises(StorageError):
        Shards.from_encoded([msgspec.msgpack.encode({})] * count)


@pytest.mark.parametrize("data", [b"", b"\x91\x01", b"\x81\x01\x02", b"\xc1"])
def test_a_shard_that_does_not_decode_is_a_storage_error_when_read(data: bytes) -> None:
    state = Shards.from_encoded([data])
    with pytest.raises(StorageError, match="shard 0 of a document snapshot does not decode"):
        lookup(state, ("a",))


def test_a_document_that_grew_is_split_again_when_its_shards_are_crowded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shards_module, "KEYS_PER_SHARD", 4)
    state: Root = resumed({f"k{i}": i for i in range(8)})
    assert isinstance(state, Shards)
    assert state.count == 2
    owned: Owned = {}
    state = apply_to_root(state, [SetOp((f"n{i}",), i) for i in range(24)], owned)
    assert isinstance(state, Shards)
    assert not state.crowded()  # 32 keys in 2 shards: 16 on average, not over 4 x 4
    state = apply_to_root(state, [SetOp((f"m{i}",), i) for i in range(40)], owned)
    assert isinstance(state, Shards)
    assert state.crowded()  # 72 keys in 2 shards
    assert Shards.partition(state.to_dict()).count == 32


@given(first=ops, staged=ops)
def test_a_transaction_on_shards_reads_what_it_would_on_one_dict(
    first: list[Op], staged: list[Op]
) -> None:
    """A transaction's document loaded in shards reads its own staged writes, at
    every path, as one loaded as a dict does, and leaves the loaded state as it was."""
    shared = resumed(fold(*first))
    on_shards = StagedDoc("d", lambda: shared, lambda: True)
    on_dict = StagedDoc("d", lambda: fold(*first), lambda: True)
    for doc in (on_shards, on_dict):
        for op in staged:
            if isinstance(op, SetOp):
                doc.set(op.path, op.value)
            else:
                doc.delete(op.path)
    assert on_shards.to_dict() == on_dict.to_dict() == fold(*first, *staged)
    for op in (*first, *staged):
        assert on_shards.get(op.path, "absent") == on_dict.get(op.path, "absent")
    assert shared.to_dict() == fold(*first)
    assert on_shards.ops == on_dict.ops
