"""Opening a node: its storage, with its sync engine handed in.

Storage never imports the actors layer, yet ``inst.sync()`` must open the engine.
So the instance is given the engine's opener when it is built, here, above both
layers: every instance :func:`open_instance` opens syncs with ``inst.sync()``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from eidetica.actors.sync import open_sync
from eidetica.protocol.randomness import Randomness
from eidetica.storage import instance as storage
from eidetica.storage.guard import require_trio


@asynccontextmanager
async def open_instance(
    path: str | os.PathLike[str] | None,
    *,
    randomness: Randomness | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[storage.Instance]:
    """Open the node stored in directory ``path`` (SQLite), or an in-memory one for None.

    The directory and its device key are created on first open and reused after.
    ``async with inst.sync(...) as sync:`` runs its sync engine
    (:func:`~eidetica.actors.sync.open_sync`, whose options it takes).

    ``randomness`` is where the node and its sync engine draw keys, entropy, nonces,
    ids and jitter: the system's by default. ``Randomness.seeded(seed)`` makes a
    simulation replay (with a seeded ``SimNetwork`` and trio's ``MockClock``); it is
    insecure, for tests only. ``wall_clock`` is the node's Unix time (``time.time``
    unless a simulation gives one that follows its ``MockClock``).
    """
    require_trio()
    async with storage.open_instance(
        path, sync_opener=open_sync, randomness=randomness, wall_clock=wall_clock
    ) as instance:
        yield instance
