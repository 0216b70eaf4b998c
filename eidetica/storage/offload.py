"""Checking received entries off the event loop, on every core.

A received page's own checks (decode, hash, shape, signature:
:func:`eidetica.protocol.intake.check`) are most of what taking it in costs, and they
need nothing but the bytes. PyNaCl's signature check runs in libsodium through cffi,
which lets go of the GIL, so worker threads work on slices of a page at once while
the event loop runs other tasks. Slicing must not cut an author's run, whose head
vouches for the rest (:mod:`eidetica.protocol.hashchain`): each thread reads its
slice (decode, hash, shape) and checks the signatures of the slice's own heads
(:func:`~eidetica.protocol.intake.read_slice`), a superset of the whole batch's
heads, so one thread's reading overlaps another's signature checks as before; then
the whole batch decides what those checks authenticate, and only if a head failed
does it check more, in further rounds, a slice per thread. The results are what
:func:`check` in one piece gives, in the same order, so what follows (holding,
verifying against the tree, storing) cannot tell the difference.

Small batches (a push of a few entries), and small later rounds, are checked inline:
a thread costs more than it saves. So is every
batch under trio's ``MockClock``: time a thread spends is real time, in which an
autojumping clock would see every task blocked and skip ahead, firing timeouts no run
would see, and a simulation would not replay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio
import trio.testing

from eidetica.errors import BadSignature
from eidetica.protocol.entry import Entry
from eidetica.protocol.hashchain import Authentication
from eidetica.protocol.intake import (
    Checked,
    Read,
    Rejection,
    Vouched,
    check,
    read_slice,
    settle,
    signature_errors,
)

INLINE_BELOW = 64
"""Batches, and rounds of signature checks, smaller than this are checked on the loop."""

WORKERS = max(1, os.cpu_count() or 1)
"""Threads that work on one batch at once: one per core."""

_Result = TypeVar("_Result")


async def check_entries(
    tree: str,
    raws: Sequence[bytes],
    ids: Sequence[str | None] | None = None,
    *,
    limiter: trio.CapacityLimiter | None = None,
    vouched: Vouched | None = None,
) -> tuple[list[Entry], list[Rejection]]:
    """What :func:`check` gives for the batch, worked out in worker threads; at most
    ``limiter``'s tokens of them at once, across every batch that shares it (a node
    shares one, one token per core, so batches from many peers do not start more
    threads than there are cores). ``vouched`` is called on the loop, after the
    last check."""
    if len(raws) < INLINE_BELOW or isinstance(
        trio.lowlevel.current_clock(), trio.testing.MockClock
    ):
        return check(tree, raws, ids, vouched)

    def read_one(start: int, stop: int) -> tuple[Read, Checked]:
        claims = None if ids is None else ids[start:stop]
        return read_slice(tree, raws[start:stop], claims, start=start)

    parts = await _in_slices(len(raws), read_one, limiter)
    batch = Read(
        [item for part, _ in parts for item in part.entries],
        [item for part, _ in parts for item in part.rejections],
    )
    authentication = Authentication(entry for _, entry in batch.entries)
    for _, checked in parts:
        authentication.checked(checked)
    while pending := authentication.to_check():
        errors: list[BadSignature | None]
        if len(pending) < INLINE_BELOW:
            errors = signature_errors(pending)
        else:

            def check_slice(start: int, stop: int) -> list[BadSignature | None]:
                return signature_errors(pending[start:stop])

            errors = [
                e for part in await _in_slices(len(pending), check_slice, limiter) for e in part
            ]
        authentication.checked(zip(pending, errors, strict=True))
    return settle(batch, authentication, vouched)


async def _in_slices(
    count: int,
    work: Callable[[int, int], _Result],
    limiter: trio.CapacityLimiter | None,
) -> list[_Result]:
    """``work(start, stop)`` for :data:`WORKERS` slices of ``range(count)``, each in a
    worker thread; the results in order."""
    step = -(-count // WORKERS)
    starts = range(0, count, step)
    results: list[_Result | None] = [None] * len(starts)

    async def one(slot: int, start: int) -> None:
        results[slot] = await trio.to_thread.run_sync(
            work, start, min(start + step, count), limiter=limiter
        )

    async with trio.open_nursery() as nursery:
        for slot, start in enumerate(starts):
            nursery.start_soon(one, slot, start)
    return [result for result in results if result is not None]
