"""Fuzzing what a hostile peer controls: the decoders, the request handler, and a live
WebSocket server. Any bytes get a typed error, an error answer or a closed connection;
never an exception out of the server."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.actors.service import SyncService
from eidetica.actors.transports.framing import Origin, guard, peek
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.errors import ProtocolError
from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.protocol.messages import ErrorReply, HandshakeInit
from tests.integration.test_ws import raw_client

ORIGIN = Origin(source="203.0.113.9", link="ws-in://1", reply="ws-in://1")

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
"""Any value MessagePack or JSON can carry, nested."""

ENVELOPE_KEYS = st.sampled_from(["v", "body", "id", "session", "type", "public_key"])
near_envelopes = st.dictionaries(ENVELOPE_KEYS, values, max_size=5).map(
    lambda fields: {**fields, "body": fields.get("body", {"type": "handshake_init"})}
)
"""Values shaped like an envelope, so decoding gets past the first checks."""


def deep(depth: int) -> bytes:
    return b"\x82\xa1v\x01\xa4body\x81\xa4type\xa4sync" + b"\x91" * depth + b"\xc0"


def encodings(value: Any) -> list[tuple[Codec, bytes]]:
    found = [(MSGPACK, msgspec.msgpack.encode(value))]
    with contextlib.suppress(TypeError, ValueError, msgspec.EncodeError):
        found.append((JSON, msgspec.json.encode(value)))  # bytes and NaN have no JSON form
    return found


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048) | st.sampled_from([deep(2000), deep(100_000)]))
def test_decoding_any_bytes_gives_an_envelope_or_a_protocol_error(data: bytes) -> None:
    for codec in (MSGPACK, JSON):
        with contextlib.suppress(ProtocolError):
            codec.decode(data)
        peek(codec, data)  # never raises


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=values | near_envelopes)
def test_decoding_any_structure_gives_an_envelope_or_a_protocol_error(value: Any) -> None:
    for codec, data in encodings(value):
        with contextlib.suppress(ProtocolError):
            codec.decode(data)
        peek(codec, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512) | (values | near_envelopes).map(msgspec.msgpack.encode))
def test_the_request_handler_answers_any_bytes_with_an_envelope(data: bytes) -> None:
    async def one() -> None:
        async with eidetica.open_instance(None) as inst:
            handle = guard(SyncService(inst, MSGPACK).handle, MSGPACK)
            answer = MSGPACK.decode(await handle(data, ORIGIN))
            assert answer.id == peek(MSGPACK, data).id
            if not isinstance(answer.body, ErrorReply):  # only a well-formed request passes
                assert not peek(MSGPACK, data).is_answer

    trio.run(one)


frames = st.lists(
    st.binary(max_size=64)
    | st.sampled_from([deep(2000), b"\x81\xa4body\x81\xa4type\xa2\xff\xfe"])
    | st.text(max_size=8)
    | near_envelopes.map(msgspec.msgpack.encode),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=frames)
def test_a_websocket_server_outlives_any_messages(messages: list[bytes | str]) -> None:
    """Each example sends its messages to a real server on 127.0.0.1, then shows the
    server still answers a fresh client's handshake."""

    async def one() -> None:
        server = WebSocketTransport()
        with trio.fail_after(20):
            async with eidetica.open_instance(None) as inst, trio.open_nursery() as nursery:
                handler = SyncService(inst, MSGPACK).handle
                at = await nursery.start(server.serve, "ws://127.0.0.1:0", handler)
                async with raw_client(at) as hostile:
                    for message in messages:
                        try:
                            await hostile.send_message(message)
                        except trio_websocket.ConnectionClosed:
                            break  # the server closed this connection: its right
                async with WebSocketTransport() as honest:
                    init = HandshakeInit(
                        public_key=inst.public_key,
                        challenge=b"\x01" * 32,
                        ephemeral=b"\x09" * 32,
                        time=0,
                    )
                    answer = MSGPACK.decode(await honest.request(at, MSGPACK.encode(init)))
                    assert isinstance(answer.body, ErrorReply)  # its own key: refused, typed
                nursery.cancel_scope.cancel()

    trio.run(one)
