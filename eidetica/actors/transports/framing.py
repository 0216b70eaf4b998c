"""One framing layer for every transport: where a request came from, how its bytes are
told apart, and how a handler's failure becomes an answer.

The transports move bytes; what they do with a request's bytes before and after the
handler is the same everywhere and lives here, so HTTP, WebSocket and the sim network
cannot drift apart:

- :class:`Origin` says who sent a request: the source address (for per-source
  limits), the connection it came on, and the address at which this node can send
  requests back over the same link, if the link carries requests both ways.
- :func:`peek` reads an envelope's id and message type without trusting a byte of
  it: any failure of any kind is "not an envelope", never an exception.
- :func:`guard` wraps a handler so that nothing it raises escapes: an exception
  becomes an ``internal`` error answer with the request's id and one logged reason,
  and an answer over the message limit becomes a ``too-large`` one.

Decoding with limits (size before anything is read, nesting bounded by the message
schema, every decoder failure a typed error) is :class:`~eidetica.protocol.codec.Codec`'s
job, which the handler uses; this layer never decodes a whole message itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import trio

from eidetica.protocol import limits
from eidetica.protocol.codec import Codec
from eidetica.protocol.messages import ANSWERS, ErrorReply

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one request came from."""

    source: str
    """The sender's network address without its port (an IP), or a sim node's name;
    limits per source count by it."""
    link: str
    """Names the connection (or, over HTTP, the client's address and port); limits per
    connection count by it."""
    reply: str | None = None
    """An address at which this node can send the sender requests back over the same
    link (``ws-in://7``), or ``None`` if the link carries requests one way only."""
    stopping: trio.Event | None = None
    """Set when the server that took the request begins to stop, if the transport
    lets requests in flight run on meanwhile (HTTP's grace period): a handler that
    holds a request (a watch) answers it at once then, rather than hold the stop."""


LOCAL = Origin(source="local", link="local")
"""The origin of a request that came from this process (tests, benches)."""

Handler = Callable[[bytes, Origin], Awaitable[bytes]]
"""Turns one request's bytes into its answer's bytes. A handler should answer bad
input with an error answer; :func:`guard` makes sure that one that raises cannot
take anything else down with it."""


class _Kind(msgspec.Struct):
    type: str = ""


class _Probe(msgspec.Struct):
    """Just the ``id`` and message type of an envelope."""

    id: int | None = None
    body: _Kind | None = None


_PROBES: dict[str, msgspec.json.Decoder[_Probe] | msgspec.msgpack.Decoder[_Probe]] = {
    "json": msgspec.json.Decoder(_Probe),
    "msgpack": msgspec.msgpack.Decoder(_Probe),
}


@dataclass(frozen=True, slots=True)
class Peek:
    """What :func:`peek` could tell of an envelope without decoding it."""

    id: int | None
    """The request id, if the bytes are an envelope that has one."""
    kind: str
    """The message type (``""`` if the bytes are not an envelope)."""

    @property
    def is_answer(self) -> bool:
        """Whether the envelope carries an answer rather than a request."""
        return self.kind in ANSWERS


def peek(codec: Codec, data: bytes) -> Peek:
    """The id and kind of the envelope in ``data``; bytes that are not an envelope (of
    any shape, depth or encoding) are a request with no id, for the handler to refuse."""
    try:
        probe = _PROBES[codec.name].decode(data)
    except Exception:  # hostile bytes: any failure at all means "not an envelope"
        return Peek(None, "")
    request_id = probe.id if isinstance(probe.id, int) and 0 <= probe.id < 2**63 else None
    return Peek(request_id, probe.body.type[:32] if probe.body is not None else "")


def refusal(codec: Codec, request: bytes, code: str, reason: str) -> bytes:
    """An error answer to ``request`` (with its id, if it has one), given without the
    handler."""
    message = ErrorReply(code=code, message=reason[: limits.MAX_TEXT_CHARS])
    return codec.encode(message, peek(codec, request).id)


def guard(handler: Handler, codec: Codec, *, max_answer: int = limits.MAX_MESSAGE_BYTES) -> Handler:
    """``handler``, made safe to call with anything: it never raises (but
    cancellation), and never answers more than ``max_answer`` bytes."""

    async def guarded(request: bytes, origin: Origin) -> bytes:
        try:
            answer = bytes(await handler(request, origin))
        except Exception:
            log.exception("the handler failed on a request from %s", origin.source)
            return refusal(codec, request, "internal", "the node failed to answer this request")
        if len(answer) > max_answer:
            log.error("an answer to %s was over %d bytes", origin.source, max_answer)
            return refusal(codec, request, "too-large", f"the answer is over {max_answer} bytes")
        return answer

    return guarded
