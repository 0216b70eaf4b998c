"""A document's top level split into shards, each decoded only when first read.

A snapshot of a large document is mostly its top level: after 100,000 single-key
commits, 100,000 keys. Decoding it into one dict costs tens of milliseconds, however
it is encoded, while a reader usually asks for a few keys. :class:`Shards` holds the
top level as ``count`` (a power of two) shards, each a dict of the top-level keys
whose CRC-32 (of the UTF-8 key) falls in it, kept as the msgpack bytes of the
snapshot until a read or a write needs that shard. A read then costs one shard's
decoding, a few dozen keys.

A shard is a plain dict of top-level keys, so an operation applies to it exactly as
it would to the whole document (:func:`eidetica.storage.crdt.apply_ops`). Shards are
copy-on-write like the rest of a folded state: :meth:`Shards.copy` shares every
shard, and :meth:`Shards.writable` copies the one shard a write changes. Readers in
other threads may decode a shard of a shared :class:`Shards` at once: each keeps an
equal dict, and no shard of a shared one is ever changed in place.

The number of shards is chosen when a document is split, for the keys it has then.
A document that keeps growing is split again when its shards grow crowded
(:meth:`Shards.crowded`, judged by the shards it has decoded, which cost nothing to
count), so a read's shard stays small.

The hash is CRC-32 rather than Python's ``hash`` because shards outlive the process.
Keys chosen to fall in one shard cost what a document without shards costs, no more.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from eidetica.errors import StorageError

KEYS_PER_SHARD = 64
"""The mean number of keys a shard is made for: small enough that reading one costs
microseconds, large enough that a 100,000-key document has a few thousand shards."""
MAX_SHARDS = 1 << 16
CROWDED = 4
"""Shards holding this many times :data:`KEYS_PER_SHARD` on average are split again."""

_ENCODER = msgspec.msgpack.Encoder()
_SHARD_DECODER = msgspec.msgpack.Decoder(dict[str, Any])


def shard_count(keys: int) -> int:
    """The number of shards, a power of two, for a document of ``keys`` top-level keys."""
    count = 1
    while count * KEYS_PER_SHARD < keys and count < MAX_SHARDS:
        count *= 2
    return count


def shard_of(key: str, count: int) -> int:
    """The shard that holds top-level ``key`` among ``count`` (a power of two)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) & (count - 1)


class Shards:
    """A document's top level as shards: each the msgpack of its dict, or the dict."""

    __slots__ = ("_decoded", "_encoded")

    def __init__(self, encoded: list[bytes | None], decoded: list[dict[str, Any] | None]):
        self._encoded = encoded
        """Each shard's msgpack bytes, or None if it changed since it was last encoded."""
        self._decoded = decoded
        """Each shard's dict, or None until it is read or written."""

    @classmethod
    def from_encoded(cls, shards: list[bytes]) -> Shards:
        """Shards from their msgpack bytes, as a snapshot holds them. Raises
        :class:`StorageError` unless their number is a power of two within bounds."""
        count = len(shards)
        if not 1 <= count <= MAX_SHARDS or count & (count - 1):
            raise StorageError(f"a document cannot have {count} shards")
        return cls(list(shards), [None] * count)

    @classmethod
    def partition(cls, document: dict[str, Any]) -> Shards:
        """``document``'s top level in shards (sharing its values, not copying them)."""
        count = shard_count(len(document))
        decoded: list[dict[str, Any]] = [{} for _ in range(count)]
        mask = count - 1
        for key, value in document.items():
            decoded[zlib.crc32(key.encode("utf-8", "surrogatepass")) & mask][key] = value
        return cls([None] * count, [*decoded])

    @property
    def count(self) -> int:
        """How many shards the top level is split into."""
        return len(self._decoded)

    @property
    def loaded(self) -> int:
        """How many shards are decoded (read or written since the snapshot)."""
        return sum(shard is not None for shard in self._decoded)

    def crowded(self) -> bool:
        """Whether the shards read or written so far hold :data:`CROWDED` times
        :data:`KEYS_PER_SHARD` keys on average, so the document should be split into
        more of them (an estimate from the decoded shards alone)."""
        decoded = [len(shard) for shard in self._decoded if shard is not None]
        return (
            bool(decoded)
            and len(self._decoded) < MAX_SHARDS
            and sum(decoded) > CROWDED * KEYS_PER_SHARD * len(decoded)
        )

    def read(self, key: str) -> dict[str, Any]:
        """The shard that holds ``key`` (if anything does). Shared: never change it."""
        index = shard_of(key, len(self._decoded))
        shard = self._decoded[index]
        if shard is None:
            shard = self._decoded[index] = self._decode(index)
        return shard

    def copy(self) -> Shards:
        """A copy sharing every shard, for a fold to change with :meth:`writable`."""
        return Shards(list(self._encoded), list(self._decoded))

    def writable(self, key: str, owned: dict[int, Any] | None) -> dict[str, Any]:
        """The shard that holds ``key``, to change in place. With ``owned`` (the dicts
        a copy-on-write fold may change), a shard not in it is copied first and the
        copy is owned; this :class:`Shards` must itself be owned by the same fold."""
        index = shard_of(key, len(self._decoded))
        shard = self._decoded[index]
        if shard is None:
            shard = self._decode(index)
            if owned is not None:
                owned[id(shard)] = shard
        elif owned is not None and id(shard) not in owned:
            shard = dict(shard)
            owned[id(shard)] = shard
        self._decoded[index] = shard
        self._encoded[index] = None
        return shard

    def encoded(self) -> list[bytes]:
        """Every shard's msgpack bytes, encoding only those changed since last time."""
        result: list[bytes] = []
        for index, data in enumerate(self._encoded):
            if data is not None:
                result.append(data)
                continue
            shard = self._decoded[index]
            assert shard is not None, "a shard is either encoded or decoded"
            encoded = self._encoded[index] = _ENCODER.encode(shard)
            result.append(encoded)
        return result

    def to_dict(self) -> dict[str, Any]:
        """The whole top level as one new dict (sharing the values)."""
        result: dict[str, Any] = {}
        for index in range(len(self._decoded)):
            shard = self._decoded[index]
            result.update(self._decode(index) if shard is None else shard)
        return result

    def _decode(self, index: int) -> dict[str, Any]:
        data = self._encoded[index]
        assert data is not None, "a shard is either encoded or decoded"
        try:
            return _SHARD_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise StorageError(f"shard {index} of a document snapshot does not decode") from exc

    def __repr__(self) -> str:
        return f"Shards({len(self._decoded)})"
