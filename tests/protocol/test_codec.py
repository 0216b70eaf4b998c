"""The two codecs: every message round-trips; bad bytes only ever raise typed errors."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eidetica.errors import (
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    UnknownMessage,
    UnknownVersion,
)
from eidetica.protocol import limits
from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.protocol.messages import (
    Ack,
    Changed,
    ErrorReply,
    HandshakeDone,
    HandshakeFinish,
    HandshakeInit,
    HandshakeReply,
    Message,
    SendEntries,
    Summary,
    SyncRequest,
    SyncResponse,
    TreeNews,
    Watch,
    WatchedTree,
)

CODECS = [JSON, MSGPACK]
ID = "ab" * 32
KEY = "ed25519:" + "A" * 43 + "="
SUMMARY = Summary(min_height=3, hashes=11, salt=b"s" * 16, bits=b"\x01\x02")

EXAMPLES: list[Message] = [
    HandshakeInit(public_key=KEY, challenge=b"c" * 32, ephemeral=b"e" * 32, time=1_700_000_000),
    HandshakeReply(public_key=KEY, challenge=b"d" * 32, ephemeral=b"f" * 32, signature=b"s" * 64),
    HandshakeFinish(signature=b"s" * 64, challenge=b"d" * 32),
    HandshakeDone(session=b"x" * 32),
    SyncRequest(tree=ID, tips=(ID,), summary=SUMMARY, haves=(ID,), need=(ID,), resume=b"r"),
    SyncRequest(tree=ID, tips=(ID,), summary=None, cursor=(ID,)),
    SyncResponse(tree=ID, tips=(ID,), entries=(b"\x93\x01",), more=True, summary=SUMMARY),
    SyncResponse(tree=ID, tips=(ID,), entries=(), more=False, ask_summary=True),
    SendEntries(tree=ID, entries=(b"e" * 10,), need=(ID,)),
    Ack(stored=1, rejected=2, held=3, need=(ID,), entries=(b"e",)),
    Watch(trees=(WatchedTree(tree=ID, tips=(ID,)),), wait=20),
    Changed(trees=(TreeNews(tree=ID, tips=(ID,), entries=(b"e",)),)),
    ErrorReply(code="malformed", message="why"),
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(codec: Codec, message: Message) -> None:
    envelope = codec.decode(codec.encode(message, request_id=7))
    assert envelope.body == message
    assert envelope.id == 7


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_a_session_and_mac_round_trip_and_an_empty_mac_is_left_out(codec: Codec) -> None:
    request = EXAMPLES[4]
    envelope = codec.decode(codec.encode(request, 7, session=b"s" * 32, mac=b"m" * 32))
    assert (envelope.session, envelope.mac) == (b"s" * 32, b"m" * 32)
    assert b"mac" not in codec.encode(request, 7, session=b"s" * 32)
    with pytest.raises(MalformedMessage, match="mac"):
        codec.decode(codec.encode(request, 7, session=b"s" * 32, mac=b"m" * 33))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("version", [1, 9])
def test_unknown_version_is_typed(codec: Codec, version: int) -> None:
    data = (
        codec.encode(EXAMPLES[-1])
        .replace(b'"v":3', b'"v":%d' % version)
        .replace(b"\xa1v\x03", b"\xa1v" + bytes([version]))
    )
    with pytest.raises(UnknownVersion, match=f"version {version} is not 3"):
        codec.decode(data)


def test_unknown_message_type_is_typed() -> None:
    with pytest.raises(UnknownMessage, match="teleport"):
        JSON.decode(b'{"v":3,"body":{"type":"teleport"}}')
    with pytest.raises(UnknownMessage):
        MSGPACK.decode(msgspec.msgpack.encode({"v": 3, "body": {"type": "teleport"}}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"v":3}',
        b'{"v":3,"body":{"type":"ack","stored":-1,"rejected":0,"held":0}}',
        b'{"v":3,"body":{"type":"ack","stored":1,"rejected":0,"held":0,"extra":1}}',
        b'{"v":3,"body":{"type":"sync","tree":"xyz","tips":[],"summary":null}}',
        b'{"v":"2","body":{"type":"ack"}}',
    ],
    ids=["empty", "garbage", "no-body", "negative", "unknown-field", "bad-id", "string-version"],
)
def test_malformed_messages_are_typed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        JSON.decode(data)


def test_limits_hold_in_decoding() -> None:
    with pytest.raises(MessageTooLarge):
        JSON.decode(b" " * (limits.MAX_MESSAGE_BYTES + 1))
    too_many = SendEntries(tree=ID, entries=(b"",) * (limits.MAX_ENTRIES_PER_BATCH + 1))
    with pytest.raises(MalformedMessage, match="length"):
        MSGPACK.decode(MSGPACK.encode(too_many))
    page = (b"",) * limits.MAX_ENTRIES_PER_PAGE
    big = SyncResponse(tree=ID, tips=(), entries=page, more=False)
    assert MSGPACK.decode(MSGPACK.encode(big)).body == big  # a page may hold more
    over = SyncResponse(tree=ID, tips=(), entries=(*page, b""), more=False)
    with pytest.raises(MalformedMessage, match="length"):
        MSGPACK.decode(MSGPACK.encode(over))
    long_text = ErrorReply(code="x", message="y" * (limits.MAX_TEXT_CHARS + 1))
    with pytest.raises(MalformedMessage):
        JSON.decode(JSON.encode(long_text))
    watched = (WatchedTree(tree=ID, tips=()),) * (limits.MAX_WATCH_TREES + 1)
    with pytest.raises(MalformedMessage, match="length"):
        JSON.decode(JSON.encode(Watch(trees=watched, wait=20)))
    with pytest.raises(MalformedMessage):
        JSON.decode(JSON.encode(Watch(trees=(), wait=limits.MAX_WATCH_SECONDS + 1)))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(data=st.binary(max_size=300))
def test_fuzzed_bytes_raise_only_protocol_errors(codec: Codec, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode(data)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(message=st.sampled_from(EXAMPLES), data=st.data())
def test_mutated_messages_raise_only_protocol_errors(
    codec: Codec, message: Message, data: st.DataObject
) -> None:
    encoded = bytearray(codec.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        codec.decode(bytes(encoded))
