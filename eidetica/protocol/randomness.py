"""Randomness: the one place a node draws its random bytes, keys, ids and jitter from.

Everything a node makes at random comes from its :class:`Randomness`: device keys of
in-memory nodes and of new data directories, the entropy of tree roots, handshake
challenges and ephemeral keys (so session ids), summary salts, resume tokens, retry
ids, and the generators behind redial, retry and watch jitter. By default it is the
system's: ``os.urandom`` and PyNaCl's key generator, as secure as the platform is,
with jitter from ``random.Random`` instances the system seeds.

:meth:`Randomness.seeded` makes the same draws from a seed instead, so that a
simulation (the ``sim://`` network under trio's ``MockClock``) replays the same run
event for event. It is **not secure**: anyone who knows or guesses the seed knows
every key, nonce and session key the node will make. It is for tests and
simulations, never for a node that holds real data or talks to real peers.

It lives in ``protocol`` so that every layer above may take one; storage keeps the
node's as ``Instance.randomness`` and the sync engine reads it from there.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

from eidetica.protocol.keys import SEED_BYTES, SigningKey

RandomBytes = Callable[[int], bytes]
"""Gives that many random bytes: ``os.urandom``, or a :meth:`Randomness.random_bytes`.
The pure protocol code (handshake, reconciliation) takes one of these."""

TOKEN_BYTES = 16
"""Bytes of randomness in a :meth:`Randomness.token_hex` id: as many as a UUID4's."""


class Randomness:
    """A source of random bytes, keys, ids and jitter generators; see the module.

    Make one with :meth:`system` (the default everywhere) or :meth:`seeded`. A seeded
    one gives the same sequence of draws for the same seed, so a run that draws in
    the same order draws the same values.
    """

    __slots__ = ("_lock", "_seed", "_stream")

    def __init__(self, stream: random.Random | None, seed: int | str | bytes | None) -> None:
        self._stream = stream
        """``None``: the system's randomness; else the seeded stream every draw comes from."""
        self._seed = seed
        self._lock = threading.Lock()
        """A node's blocking and aio callers share its thread, but a seeded stream is
        kept whole even if a user shares one between threads."""

    @classmethod
    def system(cls) -> Randomness:
        """The system's randomness: what every node uses unless told otherwise."""
        return cls(None, None)

    @classmethod
    def seeded(cls, seed: int | str | bytes) -> Randomness:
        """Draws fixed by ``seed``, for simulations and tests that must replay.

        Insecure by design: keys, nonces and session keys follow from the seed.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | str | bytes):
            raise TypeError(f"a seed is an int, str or bytes, not {type(seed).__name__}")
        return cls(random.Random(seed), seed)

    @property
    def is_seeded(self) -> bool:
        """Whether the draws follow from a seed (and so are not secret)."""
        return self._stream is not None

    def random_bytes(self, count: int) -> bytes:
        """``count`` random bytes (``os.urandom`` unless seeded)."""
        if self._stream is None:
            return os.urandom(count)
        with self._lock:
            return self._stream.randbytes(count)

    def token_hex(self, nbytes: int = TOKEN_BYTES) -> str:
        """A random id of ``nbytes`` bytes as hex (32 digits by default, like a UUID4's)."""
        return self.random_bytes(nbytes).hex()

    def signing_key(self) -> SigningKey:
        """A new Ed25519 key (PyNaCl's generator unless seeded)."""
        if self._stream is None:
            return SigningKey.generate()
        return SigningKey(self.random_bytes(SEED_BYTES))

    def random(self) -> random.Random:
        """A new generator for one user's jitter (the engine's redials, the retry
        queue, a watch): seeded by the system, or from this stream when seeded, so
        each user draws from a stream of its own. Not for secrets."""
        if self._stream is None:
            return random.Random()
        with self._lock:
            return random.Random(self._stream.getrandbits(128))

    def __repr__(self) -> str:
        return (
            "Randomness.system()" if self._stream is None else f"Randomness.seeded({self._seed!r})"
        )
