"""The handshake: both keys proven, a session key only the two ends know, nothing
replayable, memory bounded per source.

Like h11's tests, a :class:`PeerPair` joins an :class:`Initiator` and a
:class:`Responder` by a fake link that can record, replay or alter messages, with no
event loop and no real clock or randomness.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.errors import HandshakeFailed
from eidetica.protocol import codec, mac
from eidetica.protocol.entry import ENTRY_DOMAIN
from eidetica.protocol.handshake import (
    DEFAULT_MAX_PENDING_PER_SOURCE,
    HANDSHAKE_DOMAIN,
    Initiator,
    Proven,
    Responder,
    Transcript,
)
from eidetica.protocol.keyexchange import EphemeralKey
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.messages import (
    Ack,
    HandshakeDone,
    HandshakeFinish,
    HandshakeInit,
    HandshakeReply,
    SendEntries,
)
from eidetica.protocol.randomness import RandomBytes

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

ALICE = SigningKey(bytes(range(32)))
BOB = SigningKey(bytes([7] * 32))
CAROL = SigningKey(bytes([8] * 32))
MALLORY = SigningKey(bytes([9] * 32))
T0 = 1_700_000_000.0
EPHEMERAL = EphemeralKey.from_random(bytes([5] * 32)).public
"""A valid ephemeral public key, for messages built by hand."""

LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes([0xEC]) + bytes([0xFF] * 30) + bytes([0x7F]),
]
"""X25519 public keys of small order: any private key gives an all-zero secret."""

HandshakeMessage = HandshakeInit | HandshakeReply | HandshakeFinish | HandshakeDone
M = TypeVar("M", HandshakeInit, HandshakeReply, HandshakeFinish, HandshakeDone)


def seeded_random(label: str) -> RandomBytes:
    """A deterministic stand-in for ``os.urandom``: a fresh value on every call."""
    counter = itertools.count()

    def random_bytes(size: int) -> bytes:
        return hashlib.sha256(f"{label}/{next(counter)}".encode()).digest()[:size]

    return random_bytes


def constant_random(byte: int) -> RandomBytes:
    """The same bytes every time."""
    return lambda size: bytes([byte]) * size


def byte_sequence(*values: int) -> RandomBytes:
    """Call ``n`` gives bytes of ``values[n]``: for the fixed example of
    docs/protocol.md (a challenge, then an ephemeral key)."""
    calls = iter(values)
    return lambda size: bytes([next(calls)]) * size


class Tamper(Protocol):
    """What the link does to each message in transit."""

    def __call__(self, message: M) -> M: ...


def untouched(message: M) -> M:
    return message


class PeerPair:
    """An initiator and a responder joined by a link that records what crosses it and
    may alter it. ``now`` is the clock both sides read; tests move it."""

    def __init__(
        self,
        initiator: Initiator | None = None,
        responder: Responder | None = None,
        *,
        now: float = T0,
        tamper: Tamper = untouched,
    ) -> None:
        self.initiator = initiator or Initiator(ALICE, now=now, random_bytes=seeded_random("alice"))
        self.responder = responder or Responder(BOB, random_bytes=seeded_random("bob"))
        self.now = now
        self.tamper = tamper
        self.sent: list[HandshakeMessage] = []

    def send(self, message: M) -> M:
        message = self.tamper(message)
        self.sent.append(message)
        return message

    def exchange_init(self) -> HandshakeReply:
        """Init across, Reply back (not yet delivered to the initiator)."""
        init = self.send(self.initiator.start())
        return self.send(self.responder.receive_init(init, now=self.now))

    def exchange_finish(self, reply: HandshakeReply) -> Proven:
        """Reply delivered, Finish across, Done back and delivered."""
        finish = self.send(self.initiator.receive_reply(reply))
        proven = self.responder.receive_finish(finish, now=self.now)
        self.initiator.receive_done(self.send(proven.done))
        return proven

    def run(self) -> Proven:
        return self.exchange_finish(self.exchange_init())


def recorded_handshake(responder: Responder | None = None) -> tuple[PeerPair, Proven]:
    pair = PeerPair(responder=responder)
    return pair, pair.run()


def transcript_of(init: HandshakeInit, reply: HandshakeReply) -> Transcript:
    return Transcript(
        initiator_key=init.public_key,
        responder_key=reply.public_key,
        init_challenge=init.challenge,
        reply_challenge=reply.challenge,
        init_ephemeral=init.ephemeral,
        reply_ephemeral=reply.ephemeral,
        init_time=init.time,
    )


def init_of(key: SigningKey, challenge: bytes, ephemeral: bytes = EPHEMERAL) -> HandshakeInit:
    """An Init built by hand, at ``T0``."""
    return HandshakeInit(
        public_key=key.public_key, challenge=challenge, ephemeral=ephemeral, time=int(T0)
    )


# Success


def test_handshake_proves_both_keys_and_agrees_on_a_session() -> None:
    pair, proven = recorded_handshake()
    assert proven.peer_key == ALICE.public_key
    assert pair.initiator.peer_key == BOB.public_key
    assert pair.initiator.session == proven.session
    assert len(proven.session) == 32
    assert len(proven.session_key) == 32
    assert [type(message) for message in pair.sent] == [
        HandshakeInit,
        HandshakeReply,
        HandshakeFinish,
        HandshakeDone,
    ]


def test_receive_done_returns_the_responders_proven_key() -> None:
    pair = PeerPair()
    finish = pair.initiator.receive_reply(pair.exchange_init())
    proven = pair.responder.receive_finish(finish, now=T0)
    assert pair.initiator.receive_done(proven.done).peer_key == BOB.public_key


# The session key


def test_both_sides_derive_the_same_session_key() -> None:
    pair = PeerPair()
    finish = pair.initiator.receive_reply(pair.exchange_init())
    proven = pair.responder.receive_finish(finish, now=T0)
    mine = pair.initiator.receive_done(proven.done)
    assert mine.session_key == proven.session_key
    assert mine.session == proven.session


def test_the_session_key_never_crosses_the_wire() -> None:
    pair, proven = recorded_handshake()
    for message in pair.sent:
        for wire in (codec.JSON, codec.MSGPACK):
            assert proven.session_key not in wire.encode(message)
    assert proven.session_key.hex() not in repr(proven)


def test_every_handshake_gets_its_own_session_key() -> None:
    """Even with the same keys, challenges and time: only the ephemeral keys differ."""
    responder = Responder(BOB, random_bytes=byte_sequence(0x22, 0x44, 0x22, 0x55))
    keys = set()
    for ephemeral in (0x33, 0x66):
        initiator = Initiator(ALICE, now=T0, random_bytes=byte_sequence(0x11, ephemeral))
        keys.add(PeerPair(initiator, responder).run().session_key)
    assert len(keys) == 2


@pytest.mark.parametrize("side", ["init", "reply"])
def test_tampering_with_either_ephemeral_key_fails_the_handshake(side: str) -> None:
    """A relay that puts its own ephemeral key in place of one side's (to learn the
    session key) breaks the signature over the transcript."""
    relay_key = EphemeralKey.from_random(bytes([0x99] * 32)).public
    kind = HandshakeInit if side == "init" else HandshakeReply
    pair = PeerPair(tamper=_tamper(kind, "ephemeral", lambda _: relay_key))
    with pytest.raises(HandshakeFailed, match="signature does not verify"):
        pair.run()
    assert pair.initiator.session is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda point: point[:2].hex())
def test_a_low_order_ephemeral_key_from_the_responder_is_refused(point: bytes) -> None:
    """Even signed by the responder: a secret of all zeros would be no secret."""
    initiator = Initiator(ALICE, now=T0, random_bytes=seeded_random("alice"))
    init = initiator.start()
    reply = HandshakeReply(
        public_key=BOB.public_key, challenge=bytes(32), ephemeral=point, signature=bytes(64)
    )
    signature = BOB.sign(HANDSHAKE_DOMAIN, transcript_of(init, reply).signed_bytes("responder"))
    with pytest.raises(HandshakeFailed, match="low order"):
        initiator.receive_reply(msgspec.structs.replace(reply, signature=signature))
    assert initiator.session is None


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda point: point[:2].hex())
def test_a_low_order_ephemeral_key_from_the_initiator_is_refused(point: bytes) -> None:
    """Even with a Finish the initiator signed: no session comes of it."""
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    init = init_of(ALICE, bytes(32), ephemeral=point)
    reply = bob.receive_init(init, now=T0)
    signature = ALICE.sign(HANDSHAKE_DOMAIN, transcript_of(init, reply).signed_bytes("initiator"))
    finish = HandshakeFinish(signature=signature, challenge=reply.challenge)
    with pytest.raises(HandshakeFailed, match="low order"):
        bob.receive_finish(finish, now=T0)
    assert bob.pending_count == 0


def test_every_handshake_gets_its_own_session() -> None:
    responder = Responder(BOB, random_bytes=seeded_random("bob"))
    first = PeerPair(responder=responder).run()
    second = PeerPair(
        Initiator(ALICE, now=T0, random_bytes=seeded_random("alice again")), responder
    ).run()
    assert first.session != second.session
    assert responder.pending_count == 0


def test_a_pinned_key_that_answers_succeeds() -> None:
    initiator = Initiator(
        ALICE, now=T0, expected_key=BOB.public_key, random_bytes=seeded_random("alice")
    )
    assert PeerPair(initiator).run().peer_key == ALICE.public_key


# Replays


def test_replayed_finish_is_rejected() -> None:
    pair, _ = recorded_handshake()
    finish = pair.sent[2]
    assert isinstance(finish, HandshakeFinish)
    with pytest.raises(HandshakeFailed, match="no handshake awaits"):
        pair.responder.receive_finish(finish, now=T0 + 1)


def test_a_replayed_init_draws_a_fresh_challenge_the_replayer_cannot_answer() -> None:
    """No table of spent Init challenges is needed: answering a replayed Init gives the
    replayer a new challenge, and only Alice's private key can sign the Finish for it."""
    pair, _ = recorded_handshake()
    init, reply, finish, _ = pair.sent
    assert isinstance(init, HandshakeInit)
    assert isinstance(reply, HandshakeReply)
    assert isinstance(finish, HandshakeFinish)
    for later in (0.0, 30.0, 60.0):
        fresh = pair.responder.receive_init(init, now=T0 + later)
        assert fresh.challenge != reply.challenge
        with pytest.raises(HandshakeFailed, match="no handshake awaits"):
            pair.responder.receive_finish(finish, now=T0 + later)
        moved = msgspec.structs.replace(finish, challenge=fresh.challenge)
        with pytest.raises(HandshakeFailed, match="finish signature does not verify"):
            pair.responder.receive_finish(moved, now=T0 + later)
        fresh = pair.responder.receive_init(init, now=T0 + later)
        forged = MALLORY.sign(
            HANDSHAKE_DOMAIN, transcript_of(init, fresh).signed_bytes("initiator")
        )
        with pytest.raises(HandshakeFailed, match="finish signature does not verify"):
            pair.responder.receive_finish(
                HandshakeFinish(signature=forged, challenge=fresh.challenge), now=T0 + later
            )
    assert pair.responder.pending_count == 0


def test_replayed_init_after_the_window_is_rejected_as_too_old() -> None:
    pair, _ = recorded_handshake()
    init = pair.sent[0]
    assert isinstance(init, HandshakeInit)
    with pytest.raises(HandshakeFailed, match="from now"):
        pair.responder.receive_init(init, now=T0 + 61)
    assert pair.responder.pending_count == 0


@pytest.mark.parametrize("skew", [-61.0, 61.0, -3600.0, 86400.0, -T0])
def test_init_time_outside_the_window_is_rejected(skew: float) -> None:
    initiator = Initiator(ALICE, now=T0 + skew, random_bytes=seeded_random("alice"))
    with pytest.raises(HandshakeFailed, match="from now"):
        PeerPair(initiator, now=T0).run()


@pytest.mark.parametrize("skew", [-60.0, -1.0, 1.0, 60.0])
def test_init_time_inside_the_window_is_accepted(skew: float) -> None:
    initiator = Initiator(ALICE, now=T0 + skew, random_bytes=seeded_random("alice"))
    assert PeerPair(initiator, now=T0).run().peer_key == ALICE.public_key


def test_finish_after_the_pending_handshake_expired_is_rejected() -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    pair.now = T0 + 61
    with pytest.raises(HandshakeFailed, match="no handshake awaits"):
        pair.exchange_finish(reply)


def test_finish_at_the_end_of_the_window_is_accepted() -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    pair.now = T0 + 60
    assert pair.exchange_finish(reply).peer_key == ALICE.public_key


@pytest.mark.parametrize("random_label", ["bob", "carol"])
def test_whole_transcript_replayed_to_another_responder_is_rejected(random_label: str) -> None:
    """With the same random source, Carol even issues Bob's challenge again; the
    signature still fails, because it names Bob's key, not Carol's."""
    pair, _ = recorded_handshake()
    init, _, finish, _ = pair.sent
    assert isinstance(init, HandshakeInit)
    assert isinstance(finish, HandshakeFinish)
    carol = Responder(CAROL, random_bytes=seeded_random(random_label))
    carol.receive_init(init, now=T0)
    with pytest.raises(HandshakeFailed):
        carol.receive_finish(finish, now=T0)


def test_a_failed_finish_uses_up_the_pending_handshake() -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    finish = pair.initiator.receive_reply(reply)
    forged = msgspec.structs.replace(finish, signature=bytes(64))
    with pytest.raises(HandshakeFailed, match="does not verify"):
        pair.responder.receive_finish(forged, now=T0)
    with pytest.raises(HandshakeFailed, match="no handshake awaits"):
        pair.responder.receive_finish(finish, now=T0)


# Forgeries


def test_reply_signed_by_another_key_than_it_claims_is_rejected() -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    init = pair.sent[0]
    assert isinstance(init, HandshakeInit)
    forged = MALLORY.sign(HANDSHAKE_DOMAIN, transcript_of(init, reply).signed_bytes("responder"))
    with pytest.raises(HandshakeFailed, match="reply signature does not verify"):
        pair.initiator.receive_reply(msgspec.structs.replace(reply, signature=forged))


@pytest.mark.parametrize("signer", [MALLORY, BOB], ids=["mallory", "responder"])
def test_finish_signed_by_another_key_than_the_inits_is_rejected(signer: SigningKey) -> None:
    """Mallory claims to be Alice but can only sign as someone else."""
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    init = init_of(ALICE, bytes(32))
    reply = bob.receive_init(init, now=T0)
    transcript = transcript_of(init, reply).signed_bytes("initiator")
    finish = HandshakeFinish(
        signature=signer.sign(HANDSHAKE_DOMAIN, transcript), challenge=reply.challenge
    )
    with pytest.raises(HandshakeFailed, match="finish signature does not verify"):
        bob.receive_finish(finish, now=T0)


def test_responders_signature_cannot_stand_in_for_the_initiators() -> None:
    """The role is in the signed bytes: echoing the Reply's signature proves nothing."""
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    init = init_of(ALICE, bytes(32))
    reply = bob.receive_init(init, now=T0)
    with pytest.raises(HandshakeFailed, match="finish signature does not verify"):
        bob.receive_finish(
            HandshakeFinish(signature=reply.signature, challenge=reply.challenge), now=T0
        )


@pytest.mark.parametrize(
    "domain",
    [ENTRY_DOMAIN, b"", b"eidetica/handshake/v1\x00", b"eidetica/handshake/v2", b"eidetica/v3\x00"],
)
def test_signatures_under_another_domain_are_rejected(domain: bytes) -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    init = pair.sent[0]
    assert isinstance(init, HandshakeInit)
    transcript = transcript_of(init, reply)
    wrong_reply = BOB.sign(domain, transcript.signed_bytes("responder"))
    with pytest.raises(HandshakeFailed, match="does not verify"):
        pair.initiator.receive_reply(msgspec.structs.replace(reply, signature=wrong_reply))

    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    reply = bob.receive_init(init, now=T0)
    wrong_finish = ALICE.sign(domain, transcript_of(init, reply).signed_bytes("initiator"))
    with pytest.raises(HandshakeFailed, match="does not verify"):
        bob.receive_finish(
            HandshakeFinish(signature=wrong_finish, challenge=reply.challenge), now=T0
        )


def test_pinned_key_mismatch_is_rejected() -> None:
    initiator = Initiator(
        ALICE, now=T0, expected_key=CAROL.public_key, random_bytes=seeded_random("alice")
    )
    with pytest.raises(HandshakeFailed, match="expected peer"):
        PeerPair(initiator).run()
    assert initiator.peer_key is None


def test_connection_to_self_is_rejected_by_the_responder() -> None:
    responder = Responder(ALICE, random_bytes=seeded_random("alice"))
    with pytest.raises(HandshakeFailed, match="self-connection"):
        PeerPair(responder=responder).run()
    assert responder.pending_count == 0


def test_connection_to_self_is_rejected_by_the_initiator() -> None:
    initiator = Initiator(ALICE, now=T0, random_bytes=seeded_random("alice"))
    init = initiator.start()
    transcript = Transcript(
        ALICE.public_key,
        ALICE.public_key,
        init.challenge,
        bytes(32),
        init.ephemeral,
        EPHEMERAL,
        init.time,
    )
    reply = HandshakeReply(
        public_key=ALICE.public_key,
        challenge=bytes(32),
        ephemeral=EPHEMERAL,
        signature=ALICE.sign(HANDSHAKE_DOMAIN, transcript.signed_bytes("responder")),
    )
    with pytest.raises(HandshakeFailed, match="self-connection"):
        initiator.receive_reply(reply)


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "ed25519:",
        "ed25519:not base64!",
        "rsa:" + ALICE.public_key[len("ed25519:") :],
        ALICE.public_key[:-2] + "h=",  # non-zero padding bits: not canonical
        "ed25519:" + "A" * 40 + "==",  # 29 bytes
    ],
)
def test_malformed_keys_in_messages_are_handshake_failures(bad_key: str) -> None:
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    init = msgspec.structs.replace(init_of(ALICE, bytes(32)), public_key=bad_key)
    with pytest.raises(HandshakeFailed, match="initiator's key is malformed"):
        bob.receive_init(init, now=T0)

    pair = PeerPair()
    reply = msgspec.structs.replace(pair.exchange_init(), public_key=bad_key)
    with pytest.raises(HandshakeFailed, match="responder's key is malformed"):
        pair.initiator.receive_reply(reply)


def test_challenges_of_the_wrong_length_are_handshake_failures() -> None:
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    with pytest.raises(HandshakeFailed, match="32 bytes"):
        bob.receive_init(init_of(ALICE, bytes(31)), now=T0)
    with pytest.raises(HandshakeFailed, match="ephemeral key must be 32 bytes"):
        bob.receive_init(init_of(ALICE, bytes(32), ephemeral=bytes(31)), now=T0)
    with pytest.raises(HandshakeFailed, match="32 bytes"):
        bob.receive_finish(HandshakeFinish(signature=bytes(64), challenge=b""), now=T0)
    with pytest.raises(HandshakeFailed, match="32 bytes"):
        Initiator(ALICE, now=T0, random_bytes=lambda size: b"short").start()


# Order and state


def test_initiator_calls_out_of_order_are_rejected() -> None:
    pair = PeerPair()
    with pytest.raises(HandshakeFailed, match="out of order"):
        pair.initiator.receive_reply(
            HandshakeReply(
                public_key=BOB.public_key,
                challenge=bytes(32),
                ephemeral=EPHEMERAL,
                signature=bytes(64),
            )
        )

    pair = PeerPair()
    pair.initiator.start()
    with pytest.raises(HandshakeFailed, match="out of order"):
        pair.initiator.receive_done(HandshakeDone(session=bytes(32)))

    pair = PeerPair()
    pair.initiator.start()
    with pytest.raises(HandshakeFailed, match="out of order"):
        pair.initiator.start()

    pair, _ = recorded_handshake()
    reply = pair.sent[1]
    assert isinstance(reply, HandshakeReply)
    with pytest.raises(HandshakeFailed, match="out of order"):
        pair.initiator.receive_reply(reply)


def test_a_failed_initiator_stays_failed() -> None:
    pair = PeerPair()
    reply = pair.exchange_init()
    with pytest.raises(HandshakeFailed, match="does not verify"):
        pair.initiator.receive_reply(msgspec.structs.replace(reply, signature=bytes(64)))
    with pytest.raises(HandshakeFailed, match="out of order"):
        pair.initiator.receive_reply(reply)


def test_finish_without_an_init_is_rejected() -> None:
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    with pytest.raises(HandshakeFailed, match="no handshake awaits"):
        bob.receive_finish(HandshakeFinish(signature=bytes(64), challenge=bytes(32)), now=T0)


def test_a_message_of_the_wrong_type_is_a_handshake_failure() -> None:
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    done: Any = HandshakeDone(session=bytes(32))
    with pytest.raises(HandshakeFailed, match="expected HandshakeInit"):
        bob.receive_init(done, now=T0)
    with pytest.raises(HandshakeFailed, match="expected HandshakeFinish"):
        bob.receive_finish(done, now=T0)


def test_done_naming_another_session_is_rejected() -> None:
    pair = PeerPair()
    finish = pair.initiator.receive_reply(pair.exchange_init())
    pair.responder.receive_finish(finish, now=T0)
    with pytest.raises(HandshakeFailed, match="different session"):
        pair.initiator.receive_done(HandshakeDone(session=bytes(32)))
    assert pair.initiator.session is None


# Memory


def _init(fresh: RandomBytes, now: float = T0, key: SigningKey = ALICE) -> HandshakeInit:
    """An Init that nobody means to finish: a flooder's."""
    return HandshakeInit(
        public_key=key.public_key, challenge=fresh(32), ephemeral=EPHEMERAL, time=int(now)
    )


def _honest(label: str, responder: Responder, now: float = T0) -> PeerPair:
    return PeerPair(
        Initiator(CAROL, now=now, random_bytes=seeded_random(label)), responder, now=now
    )


@dataclass
class Waiting:
    """A handshake that has its Reply and has not sent its Finish yet."""

    pair: PeerPair
    reply: HandshakeReply

    def finishes(self) -> bool:
        """Whether the responder still takes its Finish."""
        try:
            self.pair.exchange_finish(self.reply)
        except HandshakeFailed:
            return False
        return True


def _waiting(responder: Responder, source: str, count: int, label: str = "") -> list[Waiting]:
    """``count`` honest handshakes from ``source`` that reached their Reply."""
    waiting = []
    for number in range(count):
        pair = _honest(f"{source}/{label}/{number}", responder)
        init = pair.initiator.start()
        waiting.append(Waiting(pair, responder.receive_init(init, now=T0, source=source)))
    return waiting


def test_a_flood_of_inits_from_one_source_never_stops_another_sources_handshake() -> None:
    """Issue 9: 4,096 Inits from one connection used to fill the spent-challenge table
    and have every other handshake answered "busy" for a minute or two."""
    bob = Responder(BOB, random_bytes=seeded_random("bob"))
    fresh = seeded_random("flood")
    (honest,) = _waiting(bob, "honest", 1)
    for _ in range(4096):
        bob.receive_init(_init(fresh), now=T0, source="flooder")
    assert bob.pending_count == 1 + DEFAULT_MAX_PENDING_PER_SOURCE
    assert honest.finishes()
    after = _honest("after the flood", bob)
    assert after.run().peer_key == CAROL.public_key


def test_a_source_at_its_cap_pushes_out_only_its_own_oldest_handshake() -> None:
    bob = Responder(BOB, max_pending_per_source=3, random_bytes=seeded_random("bob"))
    others = _waiting(bob, "other", 3)
    mine = _waiting(bob, "mine", 5)
    assert bob.pending_count == 6
    assert [waiting.finishes() for waiting in mine] == [False, False, True, True, True]
    assert all(waiting.finishes() for waiting in others)
    assert bob.pending_count == 0


def test_a_full_table_pushes_out_the_oldest_handshake_of_the_biggest_source() -> None:
    bob = Responder(BOB, max_pending=6, random_bytes=seeded_random("bob"))
    small = _waiting(bob, "small", 2)
    big = _waiting(bob, "big", 4)
    newcomer = _waiting(bob, "newcomer", 2)
    assert bob.pending_count == 6
    assert [waiting.finishes() for waiting in big] == [False, False, True, True]
    assert all(waiting.finishes() for waiting in small + newcomer)


def test_the_pending_table_never_refuses_and_pruning_frees_it() -> None:
    bob = Responder(BOB, max_pending=3, random_bytes=seeded_random("bob"))
    fresh = seeded_random("flood")
    for _ in range(8):
        bob.receive_init(_init(fresh), now=T0)
        assert bob.pending_count <= 3
    assert bob.pending_count == 3
    bob.receive_init(_init(fresh, T0 + 61), now=T0 + 61)
    assert bob.pending_count == 1


def test_completed_handshakes_take_no_room() -> None:
    bob = Responder(BOB, max_pending=1, random_bytes=seeded_random("bob"))
    for label in ("one", "two", "three"):
        assert _honest(label, bob).run().peer_key == CAROL.public_key
    assert bob.pending_count == 0


def test_caps_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pending must"):
        Responder(BOB, max_pending=0)
    with pytest.raises(ValueError, match="max_pending_per_source must"):
        Responder(BOB, max_pending_per_source=0)


@given(
    sources=st.integers(2, 5),
    max_pending=st.integers(2, 16),
    order=st.lists(st.integers(0, 4), max_size=60),
    modest_at=st.lists(st.integers(0, 60), max_size=16),
)
@settings(deadline=None, max_examples=60)
def test_a_source_holding_less_than_its_share_never_loses_a_handshake(
    sources: int, max_pending: int, order: list[int], modest_at: list[int]
) -> None:
    """With ``n`` sources in play, a full table gives way only at its biggest source,
    which holds at least ``max_pending / n``; so a source that sends fewer Inits than
    that keeps every one of them, whatever the others send and in whatever order."""
    share = -(-max_pending // sources) - 1  # the most Inits that stay under max_pending / n
    bob = Responder(
        BOB, max_pending=max_pending, max_pending_per_source=64, random_bytes=seeded_random("b")
    )
    fresh = seeded_random("others")
    modest_turns = sorted(modest_at)[:share]
    modest: list[Waiting] = []
    for turn, chosen in enumerate(order):
        while modest_turns and modest_turns[0] <= turn:
            modest_turns.pop(0)
            modest += _waiting(bob, "modest", 1, label=str(len(modest)))
        bob.receive_init(_init(fresh), now=T0, source=f"other{chosen % (sources - 1)}")
        assert bob.pending_count <= max_pending
    assert all(waiting.finishes() for waiting in modest)


def test_a_repeating_random_source_is_refused_not_trusted() -> None:
    bob = Responder(BOB, random_bytes=constant_random(0x22))
    fresh = seeded_random("alice")
    bob.receive_init(init_of(ALICE, fresh(32)), now=T0)
    with pytest.raises(HandshakeFailed, match="repeated"):
        bob.receive_init(init_of(ALICE, fresh(32)), now=T0)


# Tampering with anything in transit


_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:!"


_KINDS: list[type[HandshakeMessage]] = [
    HandshakeInit,
    HandshakeReply,
    HandshakeFinish,
    HandshakeDone,
]


def _tamper(kind: type[HandshakeMessage], field: str, change: Callable[[Any], Any]) -> Tamper:
    def tamper(message: M) -> M:
        if not isinstance(message, kind):
            return message
        return msgspec.structs.replace(message, **{field: change(getattr(message, field))})

    return tamper


def _shift(delta: int) -> Callable[[Any], Any]:
    return lambda time: time + delta


@st.composite
def _byte_flips(draw: st.DrawFn) -> Callable[[Any], Any]:
    index, mask = draw(st.integers(0, 63)), draw(st.integers(1, 255))

    def flip(value: bytes) -> bytes:
        spot = index % len(value)
        return value[:spot] + bytes([value[spot] ^ mask]) + value[spot + 1 :]

    return flip


@st.composite
def _key_changes(draw: st.DrawFn) -> Callable[[Any], Any]:
    if draw(st.booleans()):
        others = draw(st.permutations([ALICE, BOB, CAROL, MALLORY]))
        return lambda key: next(other.public_key for other in others if other.public_key != key)
    index, char = draw(st.integers(0, 51)), draw(st.sampled_from(_KEY_CHARS))

    def edit(key: str) -> str:
        new = char if key[index] != char else _KEY_CHARS[_KEY_CHARS.index(char) - 1]
        return key[:index] + new + key[index + 1 :]

    return edit


@st.composite
def tamperings(draw: st.DrawFn) -> tuple[str, Tamper]:
    kind = draw(st.sampled_from(_KINDS))
    field = draw(st.sampled_from(kind.__struct_fields__))
    change: Callable[[Any], Any]
    if field == "public_key":
        change = draw(_key_changes())
    elif field == "time":
        within, beyond = st.integers(-60, 60), st.integers(-(10**12), 10**12)
        change = _shift(draw(st.one_of(within, beyond).filter(bool)))
    else:
        change = draw(_byte_flips())
    return f"{kind.__name__}.{field}", _tamper(kind, field, change)


@given(tamperings())
@settings(deadline=None)
def test_tampering_with_any_field_in_transit_fails_the_handshake(
    tampering: tuple[str, Tamper],
) -> None:
    _, tamper = tampering
    pair = PeerPair(tamper=tamper)
    with pytest.raises(HandshakeFailed):
        pair.run()
    assert pair.initiator.session is None


# Wire forms


EXAMPLE_TREE = "ab" * 32


@dataclass(frozen=True)
class Example:
    """The fixed handshake of docs/protocol.md, and one request and answer under it."""

    messages: list[HandshakeMessage]
    proven: Proven
    request: SendEntries
    request_mac: bytes
    answer: Ack
    answer_mac: bytes

    @property
    def envelopes(self) -> list[bytes]:
        """The JSON of each message as it travels (no request id)."""
        handshake = [codec.JSON.encode(message) for message in self.messages]
        request = codec.JSON.encode(self.request, session=self.proven.session, mac=self.request_mac)
        return [*handshake, request, codec.JSON.encode(self.answer, mac=self.answer_mac)]


def _example() -> Example:
    initiator = Initiator(ALICE, now=T0, random_bytes=byte_sequence(0x11, 0x33))
    responder = Responder(BOB, random_bytes=byte_sequence(0x22, 0x44))
    pair = PeerPair(initiator, responder)
    proven = pair.run()
    request = SendEntries(tree=EXAMPLE_TREE, entries=())
    request_mac = mac.request_mac(proven.session_key, proven.session, request)
    answer = Ack(stored=0, rejected=0, held=0)
    answer_mac = mac.answer_mac(proven.session_key, proven.session, request_mac, answer)
    return Example(pair.sent, proven, request, request_mac, answer, answer_mac)


def _example_messages() -> list[HandshakeMessage]:
    return _example().messages


@pytest.mark.parametrize("wire", [codec.JSON, codec.MSGPACK], ids=["json", "msgpack"])
@pytest.mark.parametrize("index", range(4), ids=["init", "reply", "finish", "done"])
def test_handshake_messages_round_trip_through_both_codecs(wire: codec.Codec, index: int) -> None:
    message = _example_messages()[index]
    envelope = wire.decode(wire.encode(message, request_id=7))
    assert envelope.body == message
    assert envelope.id == 7


def _doc_section() -> str:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = re.search(r"^## \d+\. Handshake\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "docs/protocol.md has no Handshake section"
    return section.group(1)


def test_documented_json_examples_are_what_the_code_sends() -> None:
    blocks = re.findall(r"^```json\n(.*?)\n```", _doc_section(), re.MULTILINE | re.DOTALL)
    assert blocks == [envelope.decode() for envelope in _example().envelopes]


def _documented_values() -> dict[str, str]:
    block = re.search(
        r"^### Example\n.*?^```text\n(.*?)^```", _doc_section(), re.MULTILINE | re.DOTALL
    )
    assert block
    values: dict[str, str] = {}
    name = ""
    for line in block.group(1).splitlines():
        if line.startswith(" "):
            values[name] += line.strip()
        else:
            name, value = line.split(maxsplit=1)
            values[name] = value
    return values


def test_documented_transcripts_session_and_macs_are_what_the_code_computes() -> None:
    example = _example()
    init, reply, finish, done = example.messages
    assert isinstance(init, HandshakeInit)
    assert isinstance(reply, HandshakeReply)
    assert isinstance(finish, HandshakeFinish)
    assert isinstance(done, HandshakeDone)
    transcript = transcript_of(init, reply)
    init_secret, reply_secret = bytes([0x33] * 32), bytes([0x44] * 32)
    shared = nacl.bindings.crypto_scalarmult(init_secret, reply.ephemeral)
    assert shared == nacl.bindings.crypto_scalarmult(reply_secret, init.ephemeral)
    assert _documented_values() == {
        "initiator.seed": bytes(range(32)).hex(),
        "initiator.key": ALICE.public_key,
        "responder.seed": bytes([7] * 32).hex(),
        "responder.key": BOB.public_key,
        "init.challenge": init.challenge.hex(),
        "init.ephemeral_secret": init_secret.hex(),
        "init.ephemeral": init.ephemeral.hex(),
        "reply.challenge": reply.challenge.hex(),
        "reply.ephemeral_secret": reply_secret.hex(),
        "reply.ephemeral": reply.ephemeral.hex(),
        "init.time": str(init.time),
        "responder.transcript": transcript.signed_bytes("responder").hex(),
        "reply.signature": reply.signature.hex(),
        "initiator.transcript": transcript.signed_bytes("initiator").hex(),
        "finish.signature": finish.signature.hex(),
        "session": done.session.hex(),
        "shared_secret": shared.hex(),
        "session_key": example.proven.session_key.hex(),
        "request.msgpack": msgspec.msgpack.encode(example.request).hex(),
        "request.mac": example.request_mac.hex(),
        "answer.msgpack": msgspec.msgpack.encode(example.answer).hex(),
        "answer.mac": example.answer_mac.hex(),
    }


def test_the_documented_transcript_is_261_bytes() -> None:
    init, reply, _, _ = _example_messages()
    assert isinstance(init, HandshakeInit) and isinstance(reply, HandshakeReply)
    transcript = transcript_of(init, reply)
    assert len(transcript.signed_bytes("responder")) == 261
    assert len(transcript.signed_bytes("initiator")) == 261
    assert "261 bytes" in _doc_section()
