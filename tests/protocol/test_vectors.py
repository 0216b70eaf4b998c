"""The test vectors of ``docs/protocol.md``: fixed key, fixed entries, fixed bytes.

The values are written out here and in the document; one test reads them back out of
the document, so the specification and the implementation cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from eidetica.protocol.entry import (
    ENTRY_DOMAIN,
    SETTINGS_STORE,
    Entry,
    StoreWrite,
    create_entry,
    decode_entry,
    validate_entry,
)
from eidetica.protocol.keys import SigningKey, verify
from eidetica.storage.crdt import SetOp, decode_ops, encode_ops
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.settings import SettingsIndex
from eidetica.storage.verify import BatchVerifier

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

SEED = bytes(range(32))
PUBLIC_KEY = "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="

ROOT_SETTINGS_DATA = (
    "9293a17391a46175746881d934656432353531393a41364548762f504f454c34"
    "64634e3059353076416d57666b316a436270513166486479475a424a564d6267"
    "3da561646d696e93a17391a46e616d65a7766563746f7273"
)
ROOT_UNSIGNED = (
    "9801c090009193a95f73657474696e677390c4589293a17391a46175746881d9"
    "34656432353531393a41364548762f504f454c3464634e3059353076416d5766"
    "6b316a436270513166486479475a424a564d62673da561646d696e93a17391a4"
    "6e616d65a7766563746f7273c41000000000000000000000000000000000d934"
    "656432353531393a41364548762f504f454c3464634e3059353076416d57666b"
    "316a436270513166486479475a424a564d62673dc400"
)
ROOT_SIGNATURE = (
    "1d6b742d74f7053845f03f2feca2224049e71e354395f9cbc37e2bd05eb217cc"
    "546597877ed4577333af1accf05c571e6672472f69b2685eb7cd5b7dd71ac208"
)
ROOT_RAW = (
    "9801c090009193a95f73657474696e677390c4589293a17391a46175746881d9"
    "34656432353531393a41364548762f504f454c3464634e3059353076416d5766"
    "6b316a436270513166486479475a424a564d62673da561646d696e93a17391a4"
    "6e616d65a7766563746f7273c41000000000000000000000000000000000d934"
    "656432353531393a41364548762f504f454c3464634e3059353076416d57666b"
    "316a436270513166486479475a424a564d62673dc4401d6b742d74f7053845f0"
    "3f2feca2224049e71e354395f9cbc37e2bd05eb217cc546597877ed4577333af"
    "1accf05c571e6672472f69b2685eb7cd5b7dd71ac208"
)
ROOT_ID = "db0df735b6b16a95e85b69d3e43b71f122566d800b4a9104565fd7f50c6164d9"

CHILD_TODO_DATA = "9193a17391a46d696c6b81a4646f6e65c2"
CHILD_UNSIGNED = (
    "9801d94064623064663733356236623136613935653835623639643365343362"
    "3731663132323536366438303062346139313034353635666437663530633631"
    "3634643991d94064623064663733356236623136613935653835623639643365"
    "3433623731663132323536366438303062346139313034353635666437663530"
    "63363136346439019193a4746f646f90c4119193a17391a46d696c6b81a4646f"
    "6e65c2c400d934656432353531393a41364548762f504f454c3464634e305935"
    "3076416d57666b316a436270513166486479475a424a564d62673dc400"
)
CHILD_SIGNATURE = (
    "defca3033094e81f0e25fde37b42f7690a3f7659b3c6c28b7e0c982ab6877bdb"
    "dfd0a4a6921d5693a9ff28f38a4778cd2c7ff244b0a34333af343507f44bb007"
)
CHILD_RAW = (
    "9801d94064623064663733356236623136613935653835623639643365343362"
    "3731663132323536366438303062346139313034353635666437663530633631"
    "3634643991d94064623064663733356236623136613935653835623639643365"
    "3433623731663132323536366438303062346139313034353635666437663530"
    "63363136346439019193a4746f646f90c4119193a17391a46d696c6b81a4646f"
    "6e65c2c400d934656432353531393a41364548762f504f454c3464634e305935"
    "3076416d57666b316a436270513166486479475a424a564d62673dc440defca3"
    "033094e81f0e25fde37b42f7690a3f7659b3c6c28b7e0c982ab6877bdbdfd0a4"
    "a6921d5693a9ff28f38a4778cd2c7ff244b0a34333af343507f44bb007"
)
CHILD_ID = "8835e1e754db8bf6b2e911658d21ea5f348ba14129ead3cb24a859b4f71e135a"

VECTORS: dict[str, str] = {
    "seed": SEED.hex(),
    "public_key": PUBLIC_KEY,
    "root.settings_data": ROOT_SETTINGS_DATA,
    "root.unsigned": ROOT_UNSIGNED,
    "root.signature": ROOT_SIGNATURE,
    "root.raw": ROOT_RAW,
    "root.id": ROOT_ID,
    "child.todo_data": CHILD_TODO_DATA,
    "child.unsigned": CHILD_UNSIGNED,
    "child.signature": CHILD_SIGNATURE,
    "child.raw": CHILD_RAW,
    "child.id": CHILD_ID,
}

KEY = SigningKey(SEED)


def root_settings_ops() -> list[SetOp]:
    return [SetOp(("auth",), {PUBLIC_KEY: "admin"}), SetOp(("name",), "vectors")]


def child_todo_ops() -> list[SetOp]:
    return [SetOp(("milk",), {"done": False})]


def build_root() -> Entry:
    return create_entry(
        KEY,
        tree=None,
        parents=(),
        height=0,
        stores=[StoreWrite(SETTINGS_STORE, (), encode_ops(root_settings_ops()))],
        entropy=bytes(16),
    )


def build_child(root: Entry) -> Entry:
    return create_entry(
        KEY,
        tree=root.id,
        parents=[root.id],
        height=1,
        stores=[StoreWrite("todo", (), encode_ops(child_todo_ops()))],
    )


def doc_vectors() -> dict[str, str]:
    """The ``name value`` lines of the block under "### Values" in the protocol doc,
    with wrapped hex continuation lines joined back on."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = re.search(r"^### Values\n(.*?)(?=^#)", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "docs/protocol.md has no '### Values' section"
    block = re.search(r"^```text\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block is not None, "the '### Values' section has no text block"
    values: dict[str, str] = {}
    name: str | None = None
    for line in block.group(1).splitlines():
        if line.startswith(" "):
            assert name is not None, f"continuation line before any name: {line!r}"
            values[name] += line.strip()
        else:
            name, value = line.split()
            assert name not in values, f"{name} is given twice"
            values[name] = value
    return values


def test_public_key_of_the_fixed_seed() -> None:
    assert KEY.public_key == PUBLIC_KEY


def test_operations_encode_to_the_stated_data() -> None:
    assert encode_ops(root_settings_ops()).hex() == ROOT_SETTINGS_DATA
    assert encode_ops(child_todo_ops()).hex() == CHILD_TODO_DATA


def test_root_entry_has_the_stated_bytes_id_and_signature() -> None:
    root = build_root()
    assert root.unsigned_bytes().hex() == ROOT_UNSIGNED
    assert root.signature.hex() == ROOT_SIGNATURE
    assert root.raw.hex() == ROOT_RAW
    assert root.id == ROOT_ID


def test_child_entry_has_the_stated_bytes_id_and_signature() -> None:
    child = build_child(build_root())
    assert child.unsigned_bytes().hex() == CHILD_UNSIGNED
    assert child.signature.hex() == CHILD_SIGNATURE
    assert child.raw.hex() == CHILD_RAW
    assert child.id == CHILD_ID


@pytest.mark.parametrize(
    ("raw", "entry_id", "unsigned", "signature"),
    [
        (ROOT_RAW, ROOT_ID, ROOT_UNSIGNED, ROOT_SIGNATURE),
        (CHILD_RAW, CHILD_ID, CHILD_UNSIGNED, CHILD_SIGNATURE),
    ],
    ids=["root", "child"],
)
def test_vector_bytes_follow_the_stated_rules(
    raw: str, entry_id: str, unsigned: str, signature: str
) -> None:
    """The id, the unsigned bytes and the signature relate to the raw bytes exactly as
    the document says, checked with nothing but hashlib and the raw key check."""
    raw_bytes = bytes.fromhex(raw)
    assert hashlib.sha256(raw_bytes).hexdigest() == entry_id
    assert raw_bytes[-66:] == b"\xc4\x40" + bytes.fromhex(signature)
    assert bytes.fromhex(unsigned) == raw_bytes[:-66] + b"\xc4\x00"
    verify(PUBLIC_KEY, ENTRY_DOMAIN, bytes.fromhex(unsigned), bytes.fromhex(signature))


def test_vector_bytes_decode_and_validate_to_the_built_entries() -> None:
    root = build_root()
    child = build_child(root)
    for built, raw, entry_id in ((root, ROOT_RAW, ROOT_ID), (child, CHILD_RAW, CHILD_ID)):
        decoded = decode_entry(bytes.fromhex(raw))
        assert decoded == built
        assert decoded.raw.hex() == raw
        validated = validate_entry(bytes.fromhex(raw), entry_id)
        assert validated == built
        assert validated.id == entry_id


def test_decoded_vectors_carry_the_stated_fields() -> None:
    root = decode_entry(bytes.fromhex(ROOT_RAW))
    assert (root.version, root.tree, root.parents, root.height) == (1, None, (), 0)
    assert root.entropy == bytes(16)
    assert root.author == PUBLIC_KEY
    assert root.stores == (StoreWrite(SETTINGS_STORE, (), bytes.fromhex(ROOT_SETTINGS_DATA)),)
    assert decode_ops(root.stores[0].data) == root_settings_ops()

    child = decode_entry(bytes.fromhex(CHILD_RAW))
    assert (child.version, child.tree, child.parents, child.height) == (1, ROOT_ID, (ROOT_ID,), 1)
    assert child.entropy == b""
    assert child.author == PUBLIC_KEY
    assert child.stores == (StoreWrite("todo", (), bytes.fromhex(CHILD_TODO_DATA)),)
    assert decode_ops(child.stores[0].data) == child_todo_ops()


def test_vectors_form_a_valid_tree() -> None:
    backend = MemoryBackend()
    try:
        verifier = BatchVerifier(backend, SettingsIndex())
        entries = [decode_entry(bytes.fromhex(raw)) for raw in (CHILD_RAW, ROOT_RAW)]
        records = verifier.verify(entries, ROOT_ID)
    finally:
        backend.close()
    assert [record.entry.id for record in records] == [ROOT_ID, CHILD_ID]
    assert [record.settings_head for record in records] == [(ROOT_ID,), (ROOT_ID,)]


def test_protocol_doc_states_the_same_vectors() -> None:
    assert doc_vectors() == VECTORS
