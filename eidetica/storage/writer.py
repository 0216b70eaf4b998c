"""Writer: where a node's writes to storage run, so that storing never stalls the loop.

Every put goes through one :class:`Writer`, one at a time (a ``trio.Lock``, first
come first served), so a write in a worker thread and a write on the loop never
meet. A backend that can write in a worker thread
(:class:`~eidetica.storage.backend.ThreadedWrites`: SQLite) does so for batches of
:data:`THREAD_FROM` records or more, in transactions of at most :data:`CHUNK` records,
while the loop goes on (a received page of 1,024 entries held it for 100-150 ms).
A smaller batch, such as a local commit, is written on the loop: a worker thread's
hand-offs cost more than its transaction (about 0.1 ms), and a busy machine wakes a
thread late. So are all writes under trio's ``MockClock``, as in
:mod:`eidetica.storage.offload`, so a simulation replays.

A write's records are visible to the loop's reads once it is durable, chunk by chunk,
and ``on_stored`` is told of each chunk in the same step: nothing is read that the
backend may yet lose, and the caches the instance keeps over storage never run ahead
of it. A crash keeps a prefix of a batch's chunks: parents first, each verified, a
state the node could have reached; nobody was told of the rest. Each chunk is
authentic alone (:func:`~eidetica.protocol.hashchain.unauthentic`): an entry whose
only voucher is in a later chunk must not be stored without it, so a chunk that is
not takes the rest of the batch with it (one signature per author per chunk is
checked to know; an honest page has each chunk's run heads signed well).

A thread's write cannot be cancelled half-way (the task waits for it); a cancelled
batch keeps the chunks already written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
import trio.testing

from eidetica.protocol.hashchain import unauthentic
from eidetica.storage.backend import Backend, Record, ThreadedWrites

THREAD_FROM = 16
"""Batches of fewer records are written on the loop."""

CHUNK = 256
"""Records in one worker-thread transaction at most. Each chunk becomes visible on
its own; a larger one would make fewer transactions, and a pull's pages visible
later."""

Stored = Callable[[Sequence[Record], list[str]], None]
"""Told, on the loop, of each chunk made visible: its records and the ids new among them."""


class Writer:
    """Runs one backend's writes, one at a time, big ones in a worker thread."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._threaded = backend if isinstance(backend, ThreadedWrites) else None
        self._lock = trio.Lock()
        self._in_thread = False

    def busy(self) -> bool:
        """Whether a write is under way in a worker thread."""
        return self._in_thread

    async def put(self, records: Sequence[Record], on_stored: Stored) -> list[str]:
        """Store ``records`` (verified, parents first); return the ids that were new."""
        threaded = self._threaded
        if (
            threaded is None
            or len(records) < THREAD_FROM
            or isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        ):
            threaded = None
            if not self._lock.locked():  # nothing to wait for: no trip round the scheduler
                return self._inline(records, on_stored)
        async with self._lock:
            if threaded is None:
                return self._inline(records, on_stored)
            return await self._in_chunks(threaded, records, on_stored)

    def _inline(self, records: Sequence[Record], on_stored: Stored) -> list[str]:
        added = self._backend.put(records)
        on_stored(records, added)
        return added

    async def _in_chunks(
        self, backend: ThreadedWrites, records: Sequence[Record], on_stored: Stored
    ) -> list[str]:
        added: list[str] = []
        start = 0
        while start < len(records):
            end = _chunk_end(records, start)
            chunk, start = records[start:end], end
            await trio.lowlevel.checkpoint_if_cancelled()
            backend.pin()
            self._in_thread = True
            try:
                settle = await trio.to_thread.run_sync(backend.write, chunk)
                new = settle()
            finally:
                self._in_thread = False
                backend.unpin()
            on_stored(chunk, new)
            added.extend(new)
        return added


def _chunk_end(records: Sequence[Record], start: int) -> int:
    """Where the chunk from ``start`` ends: :data:`CHUNK` records on, or at the end of
    the batch if what vouches for an entry of those is further on (the batch as a
    whole is authentic: its caller made sure)."""
    end = min(start + CHUNK, len(records))
    if end < len(records) and unauthentic([record.entry for record in records[start:end]]):
        return len(records)
    return end
