"""The handshake: two peers each prove that they hold the private key they claim.

The initiator sends a challenge, the responder signs a transcript that includes it and
sends a challenge back, the initiator signs the transcript too, and the responder names
the new session. Unlike upstream, whose handshake proves only the server's key, both
keys are proven here, so a peer's key can be trusted for permission checks.

The transcript binds both keys, both challenges, the initiator's clock and the protocol
version, and is signed under :data:`HANDSHAKE_DOMAIN`: a signature cannot be replayed
to another node, in another handshake, for another protocol version, or passed off as
an entry signature. The responder refuses an Init whose time is outside its window or
whose challenge it has already seen, and each of its own challenges can be answered
once, within the window, so a recorded handshake cannot be replayed.

Like h11, this module is sans-IO: :class:`Initiator` and :class:`Responder` take and
return typed messages and never read a clock, a socket or the system's randomness
directly. Time comes in as ``now`` (Unix seconds, compared with the peer's clock) and
randomness through ``random_bytes``, so tests are deterministic. Every failure is a
:class:`~eidetica.errors.HandshakeFailed` that says why. The handshake proves key
possession only: it does not encrypt or bind the transport, which is TLS's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, auto
from typing import Literal

import msgspec

from eidetica.errors import BadSignature, HandshakeFailed, InvalidKey
from eidetica.protocol.keys import SigningKey, check_public_key, verify
from eidetica.protocol.limits import NONCE_BYTES
from eidetica.protocol.messages import (
    PROTOCOL_VERSION,
    HandshakeDone,
    HandshakeFinish,
    HandshakeInit,
    HandshakeReply,
)

HANDSHAKE_DOMAIN = b"eidetica/handshake/v1\x00"
"""Prefix of every handshake signature, so it is valid for nothing else."""

DEFAULT_WINDOW = 60.0
"""How far, in seconds, an Init's time may be from the responder's clock, and how long
the responder waits for the Finish."""

DEFAULT_MAX_PENDING = 4096
"""Handshakes (and spent challenges) a responder holds before it refuses new ones."""

RandomBytes = Callable[[int], bytes]
Role = Literal["initiator", "responder"]


@dataclass(frozen=True, slots=True)
class Transcript:
    """What one handshake is about; both sides sign it, each under its own role.

    ``signed_bytes(role)`` is the canonical MessagePack array ``[role, version,
    initiator_key, responder_key, init_challenge, reply_challenge, init_time]``;
    the signature is over :data:`HANDSHAKE_DOMAIN` followed by those bytes.
    """

    initiator_key: str
    responder_key: str
    init_challenge: bytes
    reply_challenge: bytes
    init_time: int

    def signed_bytes(self, role: Role) -> bytes:
        """The bytes the ``role`` side signs; the role keeps one side's signature from
        standing in for the other's."""
        return msgspec.msgpack.encode([role, PROTOCOL_VERSION, *self._fields()])

    def session(self, reply_signature: bytes, finish_signature: bytes) -> bytes:
        """The session id: SHA-256 of the domain and the transcript with both signatures,
        so both sides compute it alone and it differs for every handshake."""
        fields = ["session", PROTOCOL_VERSION, *self._fields(), reply_signature, finish_signature]
        return hashlib.sha256(HANDSHAKE_DOMAIN + msgspec.msgpack.encode(fields)).digest()

    def _fields(self) -> list[str | bytes | int]:
        return [
            self.initiator_key,
            self.responder_key,
            self.init_challenge,
            self.reply_challenge,
            self.init_time,
        ]


@dataclass(frozen=True, slots=True)
class Proven:
    """The responder's result: the initiator's proven key and the session's id."""

    peer_key: str
    session: bytes

    @property
    def done(self) -> HandshakeDone:
        """The message that tells the initiator the handshake succeeded."""
        return HandshakeDone(session=self.session)


class _State(Enum):
    NEW = auto()
    INIT_SENT = auto()
    FINISH_SENT = auto()
    DONE = auto()
    FAILED = auto()


class Initiator:
    """The side that opens a connection: sends Init, answers the Reply, checks Done.

    Call :meth:`start`, :meth:`receive_reply` and :meth:`receive_done` once each, in
    that order. Any failure, including a call out of order, ends the handshake: every
    later call raises too. Pass ``expected_key`` when dialling a known peer, so that
    another key answering is a failure rather than a new peer.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        now: float,
        expected_key: str | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._key = key
        self._time = int(now)
        self._expected_key = expected_key
        self._random_bytes = random_bytes
        self._state = _State.NEW
        self._challenge = b""
        self._session = b""
        self._responder_key = ""
        self.peer_key: str | None = None
        """The responder's key, once its Reply has proven it."""
        self.session: bytes | None = None
        """The session id, once the responder's Done has confirmed it."""

    def start(self) -> HandshakeInit:
        """The Init to send: my key, a fresh challenge and my clock."""
        with self._step(_State.NEW, _State.INIT_SENT, "start"):
            self._challenge = _fresh_challenge(self._random_bytes)
            return HandshakeInit(
                public_key=self._key.public_key, challenge=self._challenge, time=self._time
            )

    def receive_reply(self, reply: HandshakeReply) -> HandshakeFinish:
        """Check the responder's proof of its key; the Finish to send proves mine."""
        with self._step(_State.INIT_SENT, _State.FINISH_SENT, "receive_reply"):
            _expect(reply, HandshakeReply)
            responder_key = _check_key(reply.public_key, "responder")
            if responder_key == self._key.public_key:
                raise HandshakeFailed("the responder has this node's own key (a self-connection)")
            if self._expected_key is not None and responder_key != self._expected_key:
                raise HandshakeFailed(
                    f"expected peer {self._expected_key} but {responder_key} answered"
                )
            _check_nonce(reply.challenge, "reply challenge")
            transcript = Transcript(
                initiator_key=self._key.public_key,
                responder_key=responder_key,
                init_challenge=self._challenge,
                reply_challenge=reply.challenge,
                init_time=self._time,
            )
            _verify(responder_key, transcript.signed_bytes("responder"), reply.signature, "reply")
            signature = self._key.sign(HANDSHAKE_DOMAIN, transcript.signed_bytes("initiator"))
            self._session = transcript.session(reply.signature, signature)
            self._responder_key = self.peer_key = responder_key
            return HandshakeFinish(signature=signature, challenge=reply.challenge)

    def receive_done(self, done: HandshakeDone) -> str:
        """Check the responder accepted my proof; returns the responder's proven key."""
        with self._step(_State.FINISH_SENT, _State.DONE, "receive_done"):
            _expect(done, HandshakeDone)
            if not hmac.compare_digest(done.session, self._session):
                raise HandshakeFailed("the responder names a different session")
            self.session = self._session
            return self._responder_key

    @contextlib.contextmanager
    def _step(self, expected: _State, after: _State, name: str) -> Iterator[None]:
        """Run one step: only from ``expected``; on success move to ``after``; on any
        failure (the body raised) stay failed for good."""
        state, self._state = self._state, _State.FAILED
        if state is not expected:
            raise HandshakeFailed(f"{name} called out of order (handshake was {state.name})")
        yield
        self._state = after


@dataclass(frozen=True, slots=True)
class _Pending:
    """A handshake the responder has answered and whose Finish it awaits."""

    transcript: Transcript
    reply_signature: bytes
    expires: float


class Responder:
    """The side that accepts connections; one object serves every handshake.

    It holds two bounded tables: handshakes awaiting their Finish (keyed by the
    responder's challenge, for ``window`` seconds) and spent Init challenges (until the
    Init's time leaves the window, so an Init cannot be replayed). Both are pruned on
    every call; when either holds ``max_pending`` items, new Inits are refused as busy
    rather than let a flood of Inits grow memory.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        window: float = DEFAULT_WINDOW,
        max_pending: int = DEFAULT_MAX_PENDING,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._key = key
        self._window = window
        self._max_pending = max_pending
        self._random_bytes = random_bytes
        self._pending: dict[bytes, _Pending] = {}
        self._spent: set[bytes] = set()
        self._spent_expiry: list[tuple[float, bytes]] = []
        """A heap of (last valid time, challenge), one per member of ``_spent``."""

    @property
    def pending_count(self) -> int:
        """Handshakes answered and awaiting their Finish."""
        return len(self._pending)

    @property
    def spent_count(self) -> int:
        """Init challenges remembered to refuse replays."""
        return len(self._spent)

    def receive_init(self, init: HandshakeInit, *, now: float) -> HandshakeReply:
        """Check a fresh Init; the Reply proves my key and challenges the initiator."""
        self._prune(now)
        _expect(init, HandshakeInit)
        initiator_key = _check_key(init.public_key, "initiator")
        if initiator_key == self._key.public_key:
            raise HandshakeFailed("the initiator claims this node's own key (a self-connection)")
        _check_nonce(init.challenge, "init challenge")
        if not now - self._window <= init.time <= now + self._window:
            raise HandshakeFailed(
                f"init time {init.time} is more than {self._window:g} s from now ({now:.0f})"
            )
        if init.challenge in self._spent:
            raise HandshakeFailed("init challenge already used (a replayed init)")
        if len(self._pending) >= self._max_pending or len(self._spent) >= self._max_pending:
            raise HandshakeFailed("busy: too many handshakes in progress")
        reply_challenge = _fresh_challenge(self._random_bytes)
        if reply_challenge in self._pending:
            raise HandshakeFailed("the random source repeated a challenge")
        transcript = Transcript(
            initiator_key=initiator_key,
            responder_key=self._key.public_key,
            init_challenge=init.challenge,
            reply_challenge=reply_challenge,
            init_time=init.time,
        )
        signature = self._key.sign(HANDSHAKE_DOMAIN, transcript.signed_bytes("responder"))
        self._spent.add(init.challenge)
        heapq.heappush(self._spent_expiry, (init.time + self._window, init.challenge))
        self._pending[reply_challenge] = _Pending(transcript, signature, now + self._window)
        return HandshakeReply(
            public_key=self._key.public_key, challenge=reply_challenge, signature=signature
        )

    def receive_finish(self, finish: HandshakeFinish, *, now: float) -> Proven:
        """Check the initiator's proof of its key; send ``result.done`` back.

        The pending handshake is removed whatever the outcome, so each challenge gets
        one answer: a replayed or second-guessed Finish finds nothing.
        """
        self._prune(now)
        _expect(finish, HandshakeFinish)
        _check_nonce(finish.challenge, "finish challenge")
        pending = self._pending.pop(finish.challenge, None)
        if pending is None:
            raise HandshakeFailed(
                "no handshake awaits this challenge (unknown, expired or already finished)"
            )
        transcript = pending.transcript
        _verify(
            transcript.initiator_key,
            transcript.signed_bytes("initiator"),
            finish.signature,
            "finish",
        )
        return Proven(
            peer_key=transcript.initiator_key,
            session=transcript.session(pending.reply_signature, finish.signature),
        )

    def _prune(self, now: float) -> None:
        """Forget what has expired. Pending handshakes expire in the order they arrived
        (``now`` plus a fixed window), so only the oldest need looking at."""
        while self._pending:
            oldest = next(iter(self._pending))
            if self._pending[oldest].expires >= now:
                break
            del self._pending[oldest]
        while self._spent_expiry and self._spent_expiry[0][0] < now:
            _, challenge = heapq.heappop(self._spent_expiry)
            self._spent.discard(challenge)


def _expect(message: object, kind: type) -> None:
    if not isinstance(message, kind):
        raise HandshakeFailed(f"expected {kind.__name__}, got {type(message).__name__}")


def _check_key(public_key: str, who: str) -> str:
    try:
        return check_public_key(public_key)
    except InvalidKey as exc:
        raise HandshakeFailed(f"the {who}'s key is malformed: {exc}") from exc


def _check_nonce(challenge: bytes, what: str) -> None:
    if not isinstance(challenge, bytes) or len(challenge) != NONCE_BYTES:
        raise HandshakeFailed(f"the {what} must be {NONCE_BYTES} bytes")


def _fresh_challenge(random_bytes: RandomBytes) -> bytes:
    challenge = random_bytes(NONCE_BYTES)
    _check_nonce(challenge, "random source's challenge")
    return challenge


def _verify(public_key: str, message: bytes, signature: bytes, what: str) -> None:
    try:
        verify(public_key, HANDSHAKE_DOMAIN, message, signature)
    except (InvalidKey, BadSignature) as exc:
        raise HandshakeFailed(f"the {what} signature does not verify: {exc}") from exc
