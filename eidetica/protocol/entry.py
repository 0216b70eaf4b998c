"""Entries: the signed, content-addressed unit of every tree.

An entry's canonical bytes are a MessagePack array in a fixed field order (see
``docs/protocol.md``). Its id is the SHA-256 of those bytes, signature included; the
signature is Ed25519 over :data:`ENTRY_DOMAIN` followed by the same bytes with an empty
signature. Decoding accepts canonical bytes only, so an entry has exactly one byte
form and one id in every process.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable

import msgspec

from eidetica.errors import (
    EntryTooLarge,
    IdMismatch,
    InvalidKey,
    InvalidStoreName,
    MalformedEntry,
    ShapeError,
)
from eidetica.protocol import limits
from eidetica.protocol.keys import SIGNATURE_BYTES, SigningKey, check_public_key, verify

FORMAT_VERSION = 1
ENTRY_DOMAIN = b"eidetica/entry/v1\x00"
SETTINGS_STORE = "_settings"
"""The reserved store holding a tree's settings (name, auth) as a document."""

DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises on bad input: invalid structure, invalid UTF-8, or nesting too deep."""

_ID_PATTERN = re.compile(r"[0-9a-f]{64}")
_STORE_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{limits.MAX_STORE_NAME_CHARS}}}")


class StoreWrite(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What one entry writes to one named store: the store's own parents and its data."""

    name: str
    parents: tuple[str, ...]
    data: bytes


class Entry(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, dict=True):
    """One signed node of a tree's DAG. Build with :func:`create_entry`, read with
    :func:`decode_entry` or :func:`validate_entry`; never construct one by hand."""

    version: int
    tree: str | None
    """The id of the tree's root entry; ``None`` on the root entry itself."""
    parents: tuple[str, ...]
    height: int
    stores: tuple[StoreWrite, ...]
    entropy: bytes
    author: str
    signature: bytes

    @functools.cached_property
    def raw(self) -> bytes:
        """The canonical bytes."""
        return _ENCODER.encode(self)

    @functools.cached_property
    def id(self) -> str:
        """The hex SHA-256 of the canonical bytes."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def is_root(self) -> bool:
        return self.tree is None

    @property
    def tree_id(self) -> str:
        """The id of the tree this entry belongs to (its own id for a root)."""
        return self.tree if self.tree is not None else self.id

    @property
    def key(self) -> tuple[int, str]:
        """The total order every store folds entries in: height, then id."""
        return (self.height, self.id)

    def store(self, name: str) -> StoreWrite | None:
        """This entry's write to store ``name``, if it made one."""
        for write in self.stores:
            if write.name == name:
                return write
        return None

    def unsigned_bytes(self) -> bytes:
        """The canonical bytes with an empty signature: what the author signs, after
        :data:`ENTRY_DOMAIN`."""
        raw = self.raw
        if len(self.signature) == SIGNATURE_BYTES and raw.endswith(self.signature):
            # The signature is the last field, a bin8 of 64 bytes: swap it for an empty
            # bin rather than encode the entry again.
            return raw[: -len(_SIGNED_TAIL) - SIGNATURE_BYTES] + _EMPTY_BIN
        return _ENCODER.encode(msgspec.structs.replace(self, signature=b""))


_SIGNED_TAIL = b"\xc4\x40"  # bin8 header of a 64-byte signature
_EMPTY_BIN = b"\xc4\x00"


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Entry)


def is_entry_id(value: object) -> bool:
    """Whether ``value`` has the form of an entry id (64 lowercase hex digits)."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


def check_store_name(name: str, *, allow_reserved: bool = False) -> str:
    """Return ``name`` if it may name a store, else raise :class:`InvalidStoreName`."""
    if not _STORE_NAME_PATTERN.fullmatch(name):
        raise InvalidStoreName(
            f"store name {name[:40]!r} must be 1-{limits.MAX_STORE_NAME_CHARS} characters "
            "of letters, digits, '_', '.' and '-'"
        )
    if name.startswith("_") and not (allow_reserved and name == SETTINGS_STORE):
        raise InvalidStoreName(f"store names starting with '_' are reserved: {name!r}")
    return name


def create_entry(
    key: SigningKey,
    *,
    tree: str | None,
    parents: Iterable[str],
    height: int,
    stores: Iterable[StoreWrite],
    entropy: bytes = b"",
) -> Entry:
    """A signed entry; parents and stores are put in canonical order, then checked."""
    entry = _signed(
        key,
        _unsigned(key, tree=tree, parents=parents, height=height, stores=stores, entropy=entropy),
    )
    check_shape(entry)
    return entry


def create_commit_entry(
    key: SigningKey,
    *,
    tree: str,
    parents: Iterable[str],
    height: int,
    stores: Iterable[StoreWrite],
) -> Entry:
    """A signed non-root entry made of parts its caller already holds checked: what
    :func:`create_entry` makes from the same parts, for a local commit.

    The caller vouches that ``parents`` and every store's parents are ids of entries
    it stores: it read them from its backend, which stores nothing unverified. So
    their pattern is not matched again, nor the author's key (``key``'s own); every
    other rule of :func:`check_shape` is checked (counts, size, order, the tree's id,
    store names, a non-root entry's form).
    """
    entry = _signed(
        key, _unsigned(key, tree=tree, parents=parents, height=height, stores=stores, entropy=b"")
    )
    _check_shape(entry, parts_checked=True)
    return entry


def _unsigned(
    key: SigningKey,
    *,
    tree: str | None,
    parents: Iterable[str],
    height: int,
    stores: Iterable[StoreWrite],
    entropy: bytes,
) -> Entry:
    """The entry with an empty signature, its parents and stores in canonical order."""
    return Entry(
        version=FORMAT_VERSION,
        tree=tree,
        parents=tuple(sorted(set(parents))),
        height=height,
        stores=tuple(
            sorted(
                (StoreWrite(w.name, tuple(sorted(set(w.parents))), w.data) for w in stores),
                key=_store_name,
            )
        ),
        entropy=entropy,
        author=key.public_key,
        signature=b"",
    )


def _store_name(write: StoreWrite) -> str:
    return write.name


def _signed(key: SigningKey, unsigned: Entry) -> Entry:
    """``unsigned`` with its signature, its canonical bytes and its id: the bytes are
    the unsigned encoding with the empty signature swapped for the real one (the last
    field), and the id is hashed once here rather than on first use."""
    unsigned_raw = _ENCODER.encode(unsigned)
    signature = key.sign(ENTRY_DOMAIN, unsigned_raw)
    raw = unsigned_raw[: -len(_EMPTY_BIN)] + _SIGNED_TAIL + signature
    if len(raw) > limits.MAX_ENTRY_BYTES:
        raise EntryTooLarge(f"entry is {len(raw)} bytes, over {limits.MAX_ENTRY_BYTES}")
    entry = msgspec.structs.replace(unsigned, signature=signature)
    entry.__dict__["raw"] = raw
    entry.__dict__["id"] = hashlib.sha256(raw).hexdigest()
    return entry


def decode_entry(raw: bytes) -> Entry:
    """Decode canonical bytes into an entry; no signature or shape check."""
    if len(raw) > limits.MAX_ENTRY_BYTES:
        raise EntryTooLarge(f"entry is {len(raw)} bytes, over {limits.MAX_ENTRY_BYTES}")
    try:
        entry = _DECODER.decode(raw)
    except DECODE_ERRORS as exc:
        raise MalformedEntry(f"entry bytes do not decode: {exc}") from exc
    if entry.raw != raw:
        raise MalformedEntry("entry bytes are not in canonical form")
    return entry


def load_entry(raw: bytes) -> Entry:
    """Decode bytes this node verified and stored before: no canonical-form check.

    Only for a node's own storage; bytes from anywhere else go through
    :func:`validate_entry`.
    """
    try:
        entry = _DECODER.decode(raw)
    except DECODE_ERRORS as exc:
        raise MalformedEntry(f"stored entry bytes do not decode: {exc}") from exc
    entry.__dict__["raw"] = raw
    return entry


def validate_entry(raw: bytes, expected_id: str | None = None) -> Entry:
    """The entry ``raw`` encodes, if its bytes, shape, id and signature are all valid.

    This is every check that needs nothing but the entry itself. Checks against the
    tree (parents present, heights, permissions) are the store's, at insert time.
    A batch of received entries may instead be authenticated through its hash chains
    (:mod:`eidetica.protocol.hashchain`), which is :func:`read_entry` for each, and
    :func:`check_signature` only for those no same-author entry vouches for.
    """
    entry = read_entry(raw, expected_id)
    check_signature(entry)
    return entry


def read_entry(raw: bytes, expected_id: str | None = None) -> Entry:
    """The entry ``raw`` encodes, if its bytes, shape and id are valid: every check of
    :func:`validate_entry` but the signature's."""
    entry = decode_entry(raw)
    if expected_id is not None and entry.id != expected_id:
        raise IdMismatch(f"entry claimed id {expected_id[:16]}... but hashes to {entry.id}")
    check_shape(entry)
    return entry


def check_signature(entry: Entry) -> None:
    """Raise :class:`~eidetica.errors.BadSignature` unless the entry's signature
    verifies under its author's key and :data:`ENTRY_DOMAIN`."""
    verify(entry.author, ENTRY_DOMAIN, entry.unsigned_bytes(), entry.signature)


def check_shape(entry: Entry) -> None:
    """Raise :class:`ShapeError` unless the entry keeps every structural rule."""
    _check_shape(entry, parts_checked=False)


def _check_shape(entry: Entry, *, parts_checked: bool) -> None:
    """:func:`check_shape`; with ``parts_checked``, less the forms of the author's key
    and of the parents' ids (see :func:`create_commit_entry`)."""
    if entry.version != FORMAT_VERSION:
        raise ShapeError(f"unknown entry format version {entry.version}")
    if not parts_checked:
        try:
            check_public_key(entry.author)
        except InvalidKey as exc:
            raise ShapeError(f"author is not a valid key: {exc}") from exc
    _check_ids("parent", entry.parents, parts_checked)
    if len(entry.stores) > limits.MAX_STORES:
        raise EntryTooLarge(f"entry writes {len(entry.stores)} stores, over {limits.MAX_STORES}")
    names = [write.name for write in entry.stores]
    if names != sorted(set(names)):
        raise ShapeError("stores must be sorted by name with no duplicates")
    for write in entry.stores:
        try:
            check_store_name(write.name, allow_reserved=True)
        except InvalidStoreName as exc:
            raise ShapeError(str(exc)) from exc
        _check_ids(f"store {write.name!r} parent", write.parents, parts_checked)
    if entry.tree is None:
        _check_root(entry)
    else:
        _check_non_root(entry)


def _check_root(entry: Entry) -> None:
    if entry.parents or entry.height != 0:
        raise ShapeError("a root entry has no parents and height 0")
    if len(entry.entropy) != limits.ENTROPY_BYTES:
        raise ShapeError(f"a root entry carries {limits.ENTROPY_BYTES} bytes of entropy")
    settings = entry.store(SETTINGS_STORE)
    if settings is None or settings.parents:
        raise ShapeError("a root entry writes the settings store, with no store parents")
    if any(write.parents for write in entry.stores):
        raise ShapeError("stores in a root entry have no parents")


def _check_non_root(entry: Entry) -> None:
    if not is_entry_id(entry.tree):
        raise ShapeError("tree must be the id of the root entry")
    if not entry.parents:
        raise ShapeError("a non-root entry has at least one parent")
    if entry.height < 1:
        raise ShapeError("a non-root entry has height of at least 1")
    if entry.entropy:
        raise ShapeError("only a root entry carries entropy")


def _check_ids(what: str, ids: tuple[str, ...], parts_checked: bool) -> None:
    if len(ids) > limits.MAX_PARENTS:
        raise EntryTooLarge(f"{len(ids)} {what}s, over {limits.MAX_PARENTS}")
    if list(ids) != sorted(set(ids)):
        raise ShapeError(f"{what}s must be sorted with no duplicates")
    if parts_checked:
        return
    for value in ids:
        if not is_entry_id(value):
            raise ShapeError(f"{what} {value[:40]!r} is not an entry id")
