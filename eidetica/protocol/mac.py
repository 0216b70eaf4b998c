"""Message authentication under a session: what makes a session more than a bearer token.

Every request that names a session carries a MAC of its body made with the session's
key (:func:`eidetica.protocol.keyexchange.session_key`), and the answer to it carries
one too, which also covers the request's MAC. A node that relayed the handshake knows
the session id but not the key: it can pass messages on unchanged, but cannot make a
request of its own, change a body, move a request to another session, pass an answer
off as a request, or hand back an answer to some other request.

The MAC covers the body's canonical MessagePack bytes, whatever codec carried it
(JSON over HTTP re-encodes to the same MessagePack), and not the envelope's request
id, which a transport may change on the way (the WebSocket transport stamps ids of its
own). Layout, all under keyed BLAKE2b-256 with the session key::

    request: MAC_DOMAIN || 0x01 || session (32) || msgpack(body)
    answer:  MAC_DOMAIN || 0x02 || session (32) || request MAC (32) || msgpack(body)
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from eidetica.protocol.limits import MAC_BYTES
from eidetica.protocol.messages import Message

MAC_DOMAIN = b"eidetica/mac/v2\x00"
"""Prefix of every MAC's input, so that a MAC is valid for nothing else."""

_REQUEST = b"\x01"
_ANSWER = b"\x02"

_encoder = msgspec.msgpack.Encoder()


def request_mac(key: bytes, session: bytes, body: Message) -> bytes:
    """The MAC of a request under ``session``."""
    return _mac(key, _REQUEST + session, body)


def answer_mac(key: bytes, session: bytes, request: bytes, body: Message) -> bytes:
    """The MAC of the answer to the request whose MAC is ``request``."""
    return _mac(key, _ANSWER + session + request, body)


def matches(expected: bytes, given: bytes) -> bool:
    """Whether a MAC that arrived is the one expected, compared in constant time."""
    return len(given) == MAC_BYTES and hmac.compare_digest(expected, given)


def _mac(key: bytes, header: bytes, body: Message) -> bytes:
    digest = hashlib.blake2b(key=key, digest_size=MAC_BYTES)
    digest.update(MAC_DOMAIN + header)
    digest.update(_encoder.encode(body))
    return digest.digest()
