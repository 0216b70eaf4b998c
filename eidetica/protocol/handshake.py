"""The handshake: two peers each prove that they hold the private key they claim, and
agree on a session key that nobody else can know.

The initiator sends a challenge and an ephemeral X25519 key, the responder signs a
transcript that includes them and sends a challenge and an ephemeral key back, the
initiator signs the transcript too, and the responder names the new session. Unlike
upstream, whose handshake proves only the server's key, both keys are proven here, so
a peer's key can be trusted for permission checks. Both sides then derive the session
key from the two ephemeral keys (:mod:`eidetica.protocol.keyexchange`); it never
crosses the wire, and every later request and answer carries a MAC made with it
(:mod:`eidetica.protocol.mac`), so the session id alone, which anyone relaying the
handshake sees, is worth nothing.

The transcript binds both keys, both challenges, both ephemeral keys, the initiator's
clock and the protocol version, and is signed under :data:`HANDSHAKE_DOMAIN`: a
signature cannot be replayed to another node, in another handshake, for another
protocol version, or passed off as an entry signature, and a relay that swapped an
ephemeral key for its own would break both signatures. The responder refuses an Init
whose time is outside its window, and each of its own challenges can be answered
once, within the window, so a recorded handshake cannot be replayed. A replayed Init
needs no table of spent challenges: it only draws a Reply with a fresh challenge,
which nobody but the holder of the initiator's private key can answer, and it costs
the responder no more than an Init anyone could make up.

Like h11, this module is sans-IO: :class:`Initiator` and :class:`Responder` take and
return typed messages and never read a clock, a socket or the system's randomness
directly. Time comes in as ``now`` (Unix seconds, compared with the peer's clock) and
randomness through ``random_bytes``, so tests are deterministic. Every failure is a
:class:`~eidetica.errors.HandshakeFailed` that says why. Nothing here encrypts:
keeping what peers exchange secret from the network is TLS's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Literal

import msgspec

from eidetica.errors import BadSignature, HandshakeFailed, InvalidKey
from eidetica.protocol.keyexchange import EphemeralKey, session_key, shared_secret
from eidetica.protocol.keys import SigningKey, check_public_key, verify
from eidetica.protocol.limits import EPHEMERAL_BYTES, NONCE_BYTES
from eidetica.protocol.messages import (
    PROTOCOL_VERSION,
    HandshakeDone,
    HandshakeFinish,
    HandshakeInit,
    HandshakeReply,
)
from eidetica.protocol.randomness import RandomBytes

HANDSHAKE_DOMAIN = b"eidetica/handshake/v2\x00"
"""Prefix of every handshake signature, so it is valid for nothing else."""

DEFAULT_WINDOW = 60.0
"""How far, in seconds, an Init's time may be from the responder's clock, and how long
the responder waits for the Finish."""

DEFAULT_MAX_PENDING = 4096
"""Handshakes awaiting their Finish that a responder holds in all; past it, the source
holding the most loses its oldest."""

DEFAULT_MAX_PENDING_PER_SOURCE = 64
"""Handshakes awaiting their Finish that one source may have; past it, that source
loses its own oldest."""

Role = Literal["initiator", "responder"]


@dataclass(frozen=True, slots=True)
class Transcript:
    """What one handshake is about; both sides sign it, each under its own role.

    ``signed_bytes(role)`` is the canonical MessagePack array ``[role, version,
    initiator_key, responder_key, init_challenge, reply_challenge, init_ephemeral,
    reply_ephemeral, init_time]``; the signature is over :data:`HANDSHAKE_DOMAIN`
    followed by those bytes.
    """

    initiator_key: str
    responder_key: str
    init_challenge: bytes
    reply_challenge: bytes
    init_ephemeral: bytes
    reply_ephemeral: bytes
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
            self.init_ephemeral,
            self.reply_ephemeral,
            self.init_time,
        ]


@dataclass(frozen=True, slots=True)
class Proven:
    """What a handshake gives either side: the other side's proven key, the session's
    id (which the Done carries) and the session's key (which nothing carries)."""

    peer_key: str
    session: bytes
    session_key: bytes = field(repr=False)

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
        self._ephemeral: EphemeralKey | None = None
        self._proven: Proven | None = None
        self.peer_key: str | None = None
        """The responder's key, once its Reply has proven it."""
        self.session: bytes | None = None
        """The session id, once the responder's Done has confirmed it."""

    def start(self) -> HandshakeInit:
        """The Init to send: my key, a fresh challenge, a fresh ephemeral key, my clock."""
        with self._step(_State.NEW, _State.INIT_SENT, "start"):
            self._challenge = _fresh_challenge(self._random_bytes)
            self._ephemeral = EphemeralKey.from_random(self._random_bytes(EPHEMERAL_BYTES))
            return HandshakeInit(
                public_key=self._key.public_key,
                challenge=self._challenge,
                ephemeral=self._ephemeral.public,
                time=self._time,
            )

    def receive_reply(self, reply: HandshakeReply) -> HandshakeFinish:
        """Check the responder's proof of its key and derive the session key; the
        Finish to send proves mine."""
        with self._step(_State.INIT_SENT, _State.FINISH_SENT, "receive_reply"):
            assert self._ephemeral is not None
            _expect(reply, HandshakeReply)
            responder_key = _check_key(reply.public_key, "responder")
            if responder_key == self._key.public_key:
                raise HandshakeFailed("the responder has this node's own key (a self-connection)")
            if self._expected_key is not None and responder_key != self._expected_key:
                raise HandshakeFailed(
                    f"expected peer {self._expected_key} but {responder_key} answered"
                )
            _check_nonce(reply.challenge, "reply challenge")
            _check_ephemeral(reply.ephemeral, "reply")
            transcript = Transcript(
                initiator_key=self._key.public_key,
                responder_key=responder_key,
                init_challenge=self._challenge,
                reply_challenge=reply.challenge,
                init_ephemeral=self._ephemeral.public,
                reply_ephemeral=reply.ephemeral,
                init_time=self._time,
            )
            _verify(responder_key, transcript.signed_bytes("responder"), reply.signature, "reply")
            secret = shared_secret(self._ephemeral, reply.ephemeral)
            signature = self._key.sign(HANDSHAKE_DOMAIN, transcript.signed_bytes("initiator"))
            session = transcript.session(reply.signature, signature)
            self._proven = Proven(responder_key, session, session_key(secret, session))
            self._ephemeral = None
            self.peer_key = responder_key
            return HandshakeFinish(signature=signature, challenge=reply.challenge)

    def receive_done(self, done: HandshakeDone) -> Proven:
        """Check the responder accepted my proof; returns the responder's proven key,
        the session and its key."""
        with self._step(_State.FINISH_SENT, _State.DONE, "receive_done"):
            _expect(done, HandshakeDone)
            assert self._proven is not None
            if not hmac.compare_digest(done.session, self._proven.session):
                raise HandshakeFailed("the responder names a different session")
            self.session = self._proven.session
            return self._proven

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
    ephemeral: EphemeralKey
    """The responder's ephemeral key; the shared secret is made only once the Finish
    verifies, so an Init that is never finished costs no Diffie-Hellman."""
    source: str
    expires: float


class _PendingHandshakes:
    """Handshakes awaiting their Finish, by reply challenge, bounded per source and in all.

    Anyone can send Inits, so this table is what a flood fills. It is grouped by source
    (the connection's address) so that the cost of a flood falls on the flooder: a
    source at its own cap loses its own oldest handshake, and when the whole table is
    full, the source holding the most loses its oldest. An honest handshake is in the
    table for one round trip, and only a flood from many sources at once, filling the
    whole table within that round trip, can push it out.

    Sources are also kept in buckets by how many handshakes they hold, so the largest
    is found without a scan; every operation costs constant time.
    """

    def __init__(self, *, max_total: int, max_per_source: int) -> None:
        self._max_total = max_total
        self._max_per_source = max_per_source
        self._by_challenge: OrderedDict[bytes, _Pending] = OrderedDict()
        """Every pending handshake, oldest first (so also soonest to expire)."""
        self._of_source: dict[str, OrderedDict[bytes, None]] = {}
        """Each source's reply challenges, oldest first."""
        self._sources_by_size: dict[int, OrderedDict[str, None]] = {}
        """Sources by how many handshakes they hold (never 0)."""
        self._largest = 0

    def __len__(self) -> int:
        return len(self._by_challenge)

    def __contains__(self, challenge: bytes) -> bool:
        return challenge in self._by_challenge

    def add(self, challenge: bytes, pending: _Pending) -> None:
        """Hold ``pending`` under ``challenge``, first dropping what the caps say must go."""
        if len(self._of_source.get(pending.source, ())) >= self._max_per_source:
            self._drop_oldest_of(pending.source)
        elif len(self._by_challenge) >= self._max_total:
            self._drop_oldest_of(next(iter(self._sources_by_size[self._largest])))
        self._by_challenge[challenge] = pending
        own = self._of_source.setdefault(pending.source, OrderedDict())
        own[challenge] = None
        self._resized(pending.source, before=len(own) - 1, after=len(own))

    def pop(self, challenge: bytes) -> _Pending | None:
        """Take out the handshake awaiting ``challenge``, if there is one."""
        pending = self._by_challenge.pop(challenge, None)
        if pending is not None:
            own = self._of_source[pending.source]
            del own[challenge]
            if not own:
                del self._of_source[pending.source]
            self._resized(pending.source, before=len(own) + 1, after=len(own))
        return pending

    def prune(self, now: float) -> None:
        """Forget the expired. Handshakes expire in the order they arrived (``now`` plus a
        fixed window), so only the oldest need looking at."""
        while self._by_challenge:
            oldest, pending = next(iter(self._by_challenge.items()))
            if pending.expires >= now:
                break
            self.pop(oldest)

    def _drop_oldest_of(self, source: str) -> None:
        self.pop(next(iter(self._of_source[source])))

    def _resized(self, source: str, *, before: int, after: int) -> None:
        """Move ``source`` from the bucket of its old size to that of its new one (one
        more or one less), and keep ``_largest`` the size of the biggest source."""
        bucket = self._sources_by_size.get(before)
        if bucket is not None:
            bucket.pop(source, None)
            if not bucket:
                del self._sources_by_size[before]
        if after:
            self._sources_by_size.setdefault(after, OrderedDict())[source] = None
        emptied_the_largest = before == self._largest and before not in self._sources_by_size
        if after > self._largest or emptied_the_largest:
            self._largest = after


class Responder:
    """The side that accepts connections; one object serves every handshake.

    It remembers only the handshakes it has answered and whose Finish it awaits, keyed
    by its own challenge, for ``window`` seconds. Each Init is answered: there is no
    "busy" refusal a flood could force on honest peers. Instead the table is bounded
    per source (``max_pending_per_source``; a source past it loses its own oldest
    handshake) and in all (``max_pending``; past it, the source holding the most loses
    its oldest), so memory stays bounded and a flood pushes out the flooder's own
    handshakes first. Pass each Init's ``source`` (the connection's address) for that
    to work; Inits without one share the source ``""``.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        window: float = DEFAULT_WINDOW,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_per_source: int = DEFAULT_MAX_PENDING_PER_SOURCE,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_per_source", max_pending_per_source),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._key = key
        self._window = window
        self._random_bytes = random_bytes
        self._pending = _PendingHandshakes(
            max_total=max_pending, max_per_source=max_pending_per_source
        )

    @property
    def pending_count(self) -> int:
        """Handshakes answered and awaiting their Finish."""
        return len(self._pending)

    def receive_init(self, init: HandshakeInit, *, now: float, source: str = "") -> HandshakeReply:
        """Check a fresh Init; the Reply proves my key and challenges the initiator.

        ``source`` names where the Init came from (an IP address, say), so that one
        source's flood of Inits pushes out its own pending handshakes, not others'.
        """
        self._pending.prune(now)
        _expect(init, HandshakeInit)
        initiator_key = _check_key(init.public_key, "initiator")
        if initiator_key == self._key.public_key:
            raise HandshakeFailed("the initiator claims this node's own key (a self-connection)")
        _check_nonce(init.challenge, "init challenge")
        _check_ephemeral(init.ephemeral, "init")
        if not now - self._window <= init.time <= now + self._window:
            raise HandshakeFailed(
                f"init time {init.time} is more than {self._window:g} s from now ({now:.0f})"
            )
        reply_challenge = _fresh_challenge(self._random_bytes)
        if reply_challenge in self._pending:
            raise HandshakeFailed("the random source repeated a challenge")
        ephemeral = EphemeralKey.from_random(self._random_bytes(EPHEMERAL_BYTES))
        transcript = Transcript(
            initiator_key=initiator_key,
            responder_key=self._key.public_key,
            init_challenge=init.challenge,
            reply_challenge=reply_challenge,
            init_ephemeral=init.ephemeral,
            reply_ephemeral=ephemeral.public,
            init_time=init.time,
        )
        signature = self._key.sign(HANDSHAKE_DOMAIN, transcript.signed_bytes("responder"))
        pending = _Pending(transcript, signature, ephemeral, source, now + self._window)
        self._pending.add(reply_challenge, pending)
        return HandshakeReply(
            public_key=self._key.public_key,
            challenge=reply_challenge,
            ephemeral=ephemeral.public,
            signature=signature,
        )

    def receive_finish(self, finish: HandshakeFinish, *, now: float) -> Proven:
        """Check the initiator's proof of its key and derive the session key; send
        ``result.done`` back.

        The pending handshake is removed whatever the outcome, so each challenge gets
        one answer: a replayed or second-guessed Finish finds nothing.
        """
        self._pending.prune(now)
        _expect(finish, HandshakeFinish)
        _check_nonce(finish.challenge, "finish challenge")
        pending = self._pending.pop(finish.challenge)
        if pending is None or pending.expires < now:
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
        secret = shared_secret(pending.ephemeral, transcript.init_ephemeral)
        session = transcript.session(pending.reply_signature, finish.signature)
        return Proven(transcript.initiator_key, session, session_key(secret, session))


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


def _check_ephemeral(ephemeral: bytes, what: str) -> None:
    if not isinstance(ephemeral, bytes) or len(ephemeral) != EPHEMERAL_BYTES:
        raise HandshakeFailed(f"the {what}'s ephemeral key must be {EPHEMERAL_BYTES} bytes")


def _fresh_challenge(random_bytes: RandomBytes) -> bytes:
    challenge = random_bytes(NONCE_BYTES)
    _check_nonce(challenge, "random source's challenge")
    return challenge


def _verify(public_key: str, message: bytes, signature: bytes, what: str) -> None:
    try:
        verify(public_key, HANDSHAKE_DOMAIN, message, signature)
    except (InvalidKey, BadSignature) as exc:
        raise HandshakeFailed(f"the {what} signature does not verify: {exc}") from exc
