"""Entries: canonical bytes, ids, signatures and shape rules."""

from __future__ import annotations

from typing import Any

import msgspec
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eidetica.errors import (
    BadSignature,
    EideticaError,
    EntryTooLarge,
    IdMismatch,
    InvalidEntry,
    InvalidKey,
    InvalidStoreName,
    MalformedEntry,
    ShapeError,
)
from eidetica.protocol import limits
from eidetica.protocol.entry import (
    ENTRY_DOMAIN,
    Entry,
    StoreWrite,
    check_store_name,
    create_commit_entry,
    create_entry,
    decode_entry,
    read_entry,
    validate_entry,
)
from eidetica.protocol.keys import SigningKey, check_public_key, verify
from tests.builders import build_dag, dag_shapes, root_entry

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(32))
ROOT = root_entry(KEY)

store_names = st.from_regex(r"[a-z][a-z0-9_.\-]{0,20}", fullmatch=True)
store_writes = st.lists(
    st.builds(StoreWrite, store_names, st.just(()), st.binary(max_size=64)),
    max_size=4,
    unique_by=lambda w: w.name,
)


def resign(entry: Entry, *, key: SigningKey = KEY, **changes: Any) -> Entry:
    """``entry`` with fields changed and a fresh valid signature, bypassing create_entry."""
    unsigned = msgspec.structs.replace(entry, signature=b"", **changes)
    return msgspec.structs.replace(unsigned, signature=key.sign(ENTRY_DOMAIN, unsigned.raw))


def child(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "tree": ROOT.id,
        "parents": [ROOT.id],
        "height": 1,
        "stores": [StoreWrite("todo", (), b"\x90")],
    }
    fields.update(overrides)
    return create_entry(KEY, **fields)  # type: ignore[arg-type]


@given(stores=store_writes, height=st.integers(1, 2**40))
def test_encode_decode_round_trip(stores: list[StoreWrite], height: int) -> None:
    entry = create_entry(KEY, tree=ROOT.id, parents=[ROOT.id], height=height, stores=stores)
    decoded = validate_entry(entry.raw, expected_id=entry.id)
    assert decoded == entry
    assert decoded.id == entry.id
    assert decoded.raw == entry.raw == msgspec.msgpack.encode(entry)


@given(shape=dag_shapes(max_entries=4), data=st.data())
def test_any_flipped_byte_fails_validation(shape: list[list[int]], data: st.DataObject) -> None:
    entry = data.draw(st.sampled_from(build_dag(KEY, shape)))
    index = data.draw(st.integers(0, len(entry.raw) - 1))
    mask = data.draw(st.integers(1, 255))
    corrupt = bytearray(entry.raw)
    corrupt[index] ^= mask
    with pytest.raises(InvalidEntry):
        validate_entry(bytes(corrupt))


entry_ids = st.binary(min_size=32, max_size=32).map(bytes.hex)


@given(
    parents=st.lists(entry_ids, min_size=1, max_size=limits.MAX_PARENTS),
    store_parents=st.lists(entry_ids, max_size=4),
    stores=store_writes,
    height=st.integers(1, 2**40),
    settings=st.booleans(),
)
def test_a_commit_entry_reads_back_as_itself_and_as_create_entry_makes_it(
    parents: list[str],
    store_parents: list[str],
    stores: list[StoreWrite],
    height: int,
    settings: bool,
) -> None:
    # A local commit's entry skips the id patterns: its bytes must still be exactly
    # what a peer's read_entry accepts, with the id, signature and fields it has here.
    writes = [StoreWrite(w.name, tuple(reversed(store_parents)), w.data) for w in stores]
    if settings:
        writes.append(StoreWrite("_settings", tuple(store_parents), b"\x90"))
    parts: dict[str, Any] = {
        "tree": ROOT.id,
        "parents": list(reversed(parents)),
        "height": height,
        "stores": writes,
    }
    entry = create_commit_entry(KEY, **parts)
    read = read_entry(entry.raw, expected_id=entry.id)
    assert read == entry
    assert read.raw == entry.raw
    assert read.id == entry.id == create_entry(KEY, **parts).id
    assert validate_entry(entry.raw) == entry


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ({"parents": []}, ShapeError),
        ({"height": 0}, ShapeError),
        ({"tree": ROOT.id.upper()}, ShapeError),
        (
            {"parents": [f"{i:064x}" for i in range(limits.MAX_PARENTS + 1)]},
            EntryTooLarge,
        ),
        (
            {"stores": [StoreWrite(f"s{i}", (), b"") for i in range(limits.MAX_STORES + 1)]},
            EntryTooLarge,
        ),
        ({"stores": [StoreWrite("no/slash", (), b"")]}, ShapeError),
        ({"stores": [StoreWrite("_private", (), b"")]}, ShapeError),
        ({"stores": [StoreWrite("big", (), b"x" * limits.MAX_ENTRY_BYTES)]}, EntryTooLarge),
    ],
)
def test_a_commit_entry_keeps_every_rule_its_parts_do_not(
    parts: dict[str, Any], error: type[Exception]
) -> None:
    fields: dict[str, Any] = {"tree": ROOT.id, "parents": [ROOT.id], "height": 1, "stores": []}
    with pytest.raises(error):
        create_commit_entry(KEY, **{**fields, **parts})


@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_signatures_are_libsodiums_for_the_same_seed(seed: bytes, message: bytes) -> None:
    key = SigningKey(seed)
    signature = key.sign(b"domain\x00", message)
    expected = nacl.signing.SigningKey(seed).sign(b"domain\x00" + message).signature
    assert signature == expected
    assert key.seed == seed
    assert SigningKey(key.seed).public_key == key.public_key
    verify(key.public_key, b"domain\x00", message, signature)


def test_forged_id_is_rejected() -> None:
    with pytest.raises(IdMismatch):
        validate_entry(ROOT.raw, expected_id="0" * 64)


def test_signature_by_another_key_is_rejected() -> None:
    forged = resign(child(), key=OTHER, author=KEY.public_key)
    with pytest.raises(BadSignature):
        validate_entry(forged.raw)


def test_non_canonical_bytes_are_rejected() -> None:
    # The version field re-encoded as a 2-byte uint instead of a positive fixint.
    raw = ROOT.raw
    assert raw[1] == 0x01
    with pytest.raises(MalformedEntry, match="canonical"):
        decode_entry(raw[:1] + b"\xcd\x00\x01" + raw[2:])


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", b"\x97" + b"\xc0" * 7, msgspec.msgpack.encode({"version": 1}), b"\x98"],
    ids=["empty", "reserved-byte", "missing-field", "map", "truncated"],
)
def test_malformed_bytes_raise_typed_error(raw: bytes) -> None:
    with pytest.raises(MalformedEntry):
        decode_entry(raw)


def test_oversized_entry_is_rejected_before_decoding() -> None:
    with pytest.raises(EntryTooLarge):
        decode_entry(b"\x00" * (limits.MAX_ENTRY_BYTES + 1))
    with pytest.raises(EntryTooLarge):
        child(stores=[StoreWrite("big", (), b"x" * limits.MAX_ENTRY_BYTES)])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"parents": ()}, "at least one parent"),
        ({"height": 0}, "height of at least 1"),
        ({"entropy": b"x" * 16}, "entropy"),
        ({"tree": "not-an-id"}, "root entry"),
        ({"parents": ("b" * 64, "a" * 64)}, "sorted"),
        ({"parents": ("a" * 64, "a" * 64)}, "sorted"),
        ({"parents": ("A" * 64,)}, "not an entry id"),
        ({"version": 2}, "version"),
        ({"stores": (StoreWrite("b", (), b""), StoreWrite("a", (), b""))}, "sorted by name"),
        ({"stores": (StoreWrite("no/slash", (), b""),)}, "store name"),
        ({"stores": (StoreWrite("_private", (), b""),)}, "reserved"),
    ],
)
def test_shape_rules_for_non_root_entries(changes: dict[str, Any], reason: str) -> None:
    entry = resign(child(), **changes)
    with pytest.raises(ShapeError, match=reason):
        validate_entry(entry.raw)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"height": 1}, "height 0"),
        ({"parents": ("a" * 64,)}, "no parents"),
        ({"entropy": b""}, "entropy"),
        ({"stores": (StoreWrite("todo", (), b""),)}, "settings store"),
    ],
)
def test_shape_rules_for_root_entries(changes: dict[str, Any], reason: str) -> None:
    entry = resign(ROOT, **changes)
    with pytest.raises(ShapeError, match=reason):
        validate_entry(entry.raw)


def test_create_entry_puts_parents_and_stores_in_canonical_order() -> None:
    a, b = "a" * 64, "b" * 64
    entry = child(
        parents=[b, a, b], stores=[StoreWrite("z", (b, a), b""), StoreWrite("m", (), b"")]
    )
    assert entry.parents == (a, b)
    assert [w.name for w in entry.stores] == ["m", "z"]
    assert entry.stores[1].parents == (a, b)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ed25519:",
        "ed25519:AAAA",
        "rsa:" + "A" * 44,
        "ed25519:" + "!" * 44,
        KEY.public_key + "=",
    ],
)
def test_malformed_public_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_public_key(key)


def test_signatures_are_bound_to_their_domain() -> None:
    signature = KEY.sign(b"one\x00", b"message")
    verify(KEY.public_key, b"one\x00", b"message", signature)
    with pytest.raises(BadSignature):
        verify(KEY.public_key, b"two\x00", b"message", signature)


@pytest.mark.parametrize("name", ["", "a" * 129, "has space", "_settings", "_x"])
def test_invalid_store_names(name: str) -> None:
    with pytest.raises(InvalidStoreName):
        check_store_name(name)


def test_every_error_is_an_eidetica_error() -> None:
    assert issubclass(InvalidEntry, EideticaError)
    assert issubclass(InvalidStoreName, EideticaError)
