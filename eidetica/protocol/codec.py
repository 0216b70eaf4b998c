"""Encoding and decoding messages: JSON for HTTP, MessagePack for WebSocket.

Both codecs carry the same :class:`Envelope`. Decoding checks, in order: the size (before
reading anything), the version, the message type, then the whole message with the
limits its field types carry. Each failure is its own typed error, so a peer's bad
bytes become an error answer, never a crash: whatever the decoder raises (invalid
UTF-8, nesting past its recursion guard, anything else) becomes
:class:`~eidetica.errors.MalformedMessage`. Nesting is bounded by the schema itself:
every message forbids unknown fields and holds no free-form values, so a message that
decodes is at most five levels deep, and deeper input fails at the first level the
schema does not allow (or at msgspec's recursion guard, inside the version probe).
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

from eidetica.errors import MalformedMessage, MessageTooLarge, UnknownMessage, UnknownVersion
from eidetica.protocol import limits
from eidetica.protocol.entry import DECODE_ERRORS
from eidetica.protocol.messages import PROTOCOL_VERSION, Envelope, Message

CodecName = Literal["json", "msgpack"]

_KNOWN_TYPES = frozenset(kind.__struct_config__.tag for kind in get_args(Message))


class _Body(msgspec.Struct):
    type: str


class _Probe(msgspec.Struct):
    """Just enough of an envelope to check the version and type before the rest."""

    v: int
    body: _Body


class Codec:
    """One wire format for envelopes."""

    def __init__(self, name: CodecName) -> None:
        self.name = name
        if name == "json":
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self._probe: msgspec.json.Decoder[_Probe] | msgspec.msgpack.Decoder[_Probe] = (
                msgspec.json.Decoder(_Probe)
            )
            self._decoder: msgspec.json.Decoder[Envelope] | msgspec.msgpack.Decoder[Envelope] = (
                msgspec.json.Decoder(Envelope)
            )
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._probe = msgspec.msgpack.Decoder(_Probe)
            self._decoder = msgspec.msgpack.Decoder(Envelope)

    def encode(
        self,
        body: Message,
        request_id: int | None = None,
        session: bytes | None = None,
        mac: bytes = b"",
    ) -> bytes:
        """The bytes of ``body`` in an envelope of the current version."""
        envelope = Envelope(v=PROTOCOL_VERSION, body=body, id=request_id, session=session, mac=mac)
        return self._encoder.encode(envelope)

    def decode(self, data: bytes) -> Envelope:
        """The envelope in ``data``, or the typed error that says what is wrong with it."""
        if len(data) > limits.MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"message is {len(data)} bytes, over {limits.MAX_MESSAGE_BYTES}")
        try:
            probe = self._probe.decode(data)
        except Exception as exc:  # hostile bytes: whatever the decoder raises is "malformed"
            raise MalformedMessage(f"not a {self.name} envelope: {_reason(exc)}") from exc
        if probe.v != PROTOCOL_VERSION:
            raise UnknownVersion(f"protocol version {probe.v} is not {PROTOCOL_VERSION}")
        if probe.body.type not in _KNOWN_TYPES:
            raise UnknownMessage(f"unknown message type {probe.body.type[:64]!r}")
        try:
            return self._decoder.decode(data)
        except Exception as exc:  # as above: no decoder failure escapes untyped
            raise MalformedMessage(f"invalid {probe.body.type} message: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """One line on why bytes did not decode, whatever the decoder raised."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, DECODE_ERRORS):
        return str(exc)[:200]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


JSON = Codec("json")
MSGPACK = Codec("msgpack")
