"""The handshake's key exchange: ephemeral X25519 keys, and the session key they give.

Proving keys alone would leave the session id a bearer token: anyone who relays an
honest handshake learns it from the Done and could then speak under it. So each side
also sends a fresh X25519 public key, both signatures cover both of them, and the two
sides derive a **session key** from the Diffie-Hellman secret that only the holders of
the ephemeral private keys can compute. The key never crosses the wire; every request
under the session, and every answer to one, carries a MAC made with it
(:mod:`eidetica.protocol.mac`), so a relay can pass messages on but cannot make or
alter one.

Sans-IO like the handshake: the private half is made from bytes the caller supplies
(its ``random_bytes``), never from the system's randomness directly. X25519 clamps
any 32 bytes into a valid private key, so random bytes are all it needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions

from eidetica.errors import HandshakeFailed
from eidetica.protocol.limits import EPHEMERAL_BYTES

SESSION_KEY_DOMAIN = b"eidetica/session-key/v2\x00"
"""Prefix of what the session key is derived from, so that derivation gives no other
value of the protocol."""

SESSION_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class EphemeralKey:
    """One side's key pair for one handshake: ``public`` goes in its message, ``secret``
    stays with it until the shared secret is made."""

    secret: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_random(cls, random: bytes) -> EphemeralKey:
        """The key pair whose private half is ``random`` (32 bytes from a secure source)."""
        if len(random) != EPHEMERAL_BYTES:
            raise HandshakeFailed(f"the random source gave {len(random)} bytes, not 32")
        return cls(secret=random, public=nacl.bindings.crypto_scalarmult_base(random))


def shared_secret(mine: EphemeralKey, theirs: bytes) -> bytes:
    """X25519 of my private key and the other side's public key.

    A public key of small order (the all-zero point and its kin) would make the secret
    all zeros, whatever my key: known to anyone, so it is refused.
    """
    if len(theirs) != EPHEMERAL_BYTES:
        raise HandshakeFailed(f"the peer's ephemeral key must be {EPHEMERAL_BYTES} bytes")
    try:
        secret = nacl.bindings.crypto_scalarmult(mine.secret, theirs)
    except nacl.exceptions.RuntimeError as exc:  # libsodium refuses an all-zero result
        raise HandshakeFailed("the peer's ephemeral key is of low order") from exc
    if secret == bytes(len(secret)):
        raise HandshakeFailed("the peer's ephemeral key is of low order")
    return secret


def session_key(secret: bytes, session: bytes) -> bytes:
    """The session's MAC key: BLAKE2b-256 keyed with the shared secret, over
    :data:`SESSION_KEY_DOMAIN` and the session id.

    The session id is a hash of the whole signed transcript (both keys, both
    challenges, both ephemeral keys, the time) and both signatures, so the key is
    bound to this handshake and to who proved what in it.
    """
    digest = hashlib.blake2b(key=secret, digest_size=SESSION_KEY_BYTES)
    digest.update(SESSION_KEY_DOMAIN + session)
    return digest.digest()
