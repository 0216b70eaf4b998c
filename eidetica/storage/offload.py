"""Checking received entries off the event loop, on every core.

A received page's own checks (decode, hash, shape, signature:
:func:`eidetica.protocol.intake.check`) are most of what taking it in costs, and they
need nothing but the bytes. PyNaCl's signature check runs in libsodium through cffi,
which lets go of the GIL, so worker threads check slices of a page at once while the
event loop runs other tasks. The slices' results are joined in order, so what follows
(holding, verifying against the tree, storing) sees exactly what a check in one piece
would give.

Small batches (a push of a few entries) are checked inline: a thread costs more than
it saves. So is every batch under trio's ``MockClock``: time a thread spends is real
time, in which an autojumping clock would see every task blocked and skip ahead,
firing timeouts no run would see, and a simulation would not replay.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio
import trio.testing

from eidetica.protocol.entry import Entry
from eidetica.protocol.intake import Rejection, check

INLINE_BELOW = 64
"""Batches smaller than this are checked on the loop."""

WORKERS = max(1, os.cpu_count() or 1)
"""Threads that check one batch at once: one per core."""


async def check_entries(
    tree: str,
    raws: Sequence[bytes],
    ids: Sequence[str | None] | None = None,
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> tuple[list[Entry], list[Rejection]]:
    """What :func:`check` gives for the batch, worked out in worker threads; at most
    ``limiter``'s tokens of them at once, across every batch that shares it (a node
    shares one, one token per core, so batches from many peers do not start more
    threads than there are cores)."""
    if len(raws) < INLINE_BELOW or isinstance(
        trio.lowlevel.current_clock(), trio.testing.MockClock
    ):
        return check(tree, raws, ids)
    step = -(-len(raws) // WORKERS)
    starts = range(0, len(raws), step)
    results: list[tuple[list[Entry], list[Rejection]]] = [([], [])] * len(starts)

    async def one(slot: int, start: int) -> None:
        claims = None if ids is None else ids[start : start + step]
        results[slot] = await trio.to_thread.run_sync(
            check, tree, raws[start : start + step], claims, limiter=limiter
        )

    async with trio.open_nursery() as nursery:
        for slot, start in enumerate(starts):
            nursery.start_soon(one, slot, start)
    valid = [entry for part, _ in results for entry in part]
    return valid, [rejection for _, part in results for rejection in part]
