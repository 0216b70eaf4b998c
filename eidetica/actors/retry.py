"""The retry queue and its actor: failed pushes wait, back off, and try again.

A failed push waits 2^attempts seconds (capped at 64, stretched by up to
``jitter``), then goes back to the supervisor to be pushed again. After
``max_attempts`` it is dropped with a logged reason: by then the periodic sync is
the better repair. The queue logic is plain code (:class:`RetryQueue`); the actor
only adds the clock and the inbox.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

log = logging.getLogger(__name__)

MAX_DELAY = 64.0


@dataclass(frozen=True, slots=True)
class RetryItem:
    """Entries of one tree that could not be pushed to one peer."""

    id: str
    peer: str
    tree: str
    entry_ids: tuple[str, ...]
    attempts: int = 0
    not_before: float = 0.0
    """Not due before this (trio clock) time: when the peer's breaker closes again."""


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure: 2, 4, 8, ... 64, 64."""
    return min(2.0 ** max(attempts, 1), MAX_DELAY)


class RetryQueue:
    """Items and when each is due; time is passed in."""

    def __init__(
        self, *, max_attempts: int = 10, jitter: float = 0.1, rng: random.Random | None = None
    ) -> None:
        self.max_attempts = max_attempts
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._due: dict[str, tuple[float, RetryItem]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._due)

    def failed(self, item: RetryItem, now: float) -> RetryItem | None:
        """Record one more failure; the item as queued, or None if it was dropped."""
        item = replace(item, attempts=item.attempts + 1)
        if item.attempts > self.max_attempts:
            self.dropped += 1
            self._due.pop(item.id, None)
            log.warning(
                "dropping push of %d entries of %s to %s after %d attempts",
                len(item.entry_ids),
                item.tree,
                item.peer,
                self.max_attempts,
            )
            return None
        delay = backoff(item.attempts) * (1 + self._jitter * self._rng.random())
        self._due[item.id] = (max(now + delay, item.not_before), item)
        return item

    def restore(self, item: RetryItem, now: float) -> None:
        """Queue an item read back after a restart: due at once."""
        self._due[item.id] = (now, item)

    def next_due(self) -> float | None:
        """When the earliest item is due."""
        return min((due for due, _ in self._due.values()), default=None)

    def take_due(self, now: float) -> list[RetryItem]:
        """Remove and return every item due by ``now``."""
        ready = [item for due, item in self._due.values() if due <= now]
        for item in ready:
            del self._due[item.id]
        return ready

    def forget_peer(self, peer: str) -> None:
        """Drop every item for a peer that is gone."""
        for key in [k for k, (_, item) in self._due.items() if item.peer == peer]:
            del self._due[key]

    def items(self) -> list[tuple[float, RetryItem]]:
        """(due, item) pairs, soonest first."""
        return sorted(self._due.values(), key=lambda pair: pair[0])

    def snapshot(self) -> RetrySnapshot:
        return RetrySnapshot(tuple(self.items()), self.dropped)


@dataclass(frozen=True, slots=True)
class ForgetPeer:
    """Drop every queued push to ``peer``: it was removed."""

    peer: str


RetryMessage = RetryItem | ForgetPeer
"""What the retry actor's inbox carries: a push that failed, or a peer to forget."""


@dataclass(frozen=True, slots=True)
class RetrySnapshot:
    """The queue as the retry actor last published it, for status: never changed."""

    items: tuple[tuple[float, RetryItem], ...] = ()
    dropped: int = 0


Due = Callable[[RetryItem], Awaitable[None]]
Publish = Callable[[RetrySnapshot], None]


async def run_retry(
    queue: RetryQueue,
    inbox: trio.MemoryReceiveChannel[RetryMessage],
    due: Due,
    *,
    dropped: Due,
    publish: Publish,
    sweep: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own ``queue`` from now on: take failed items and peers to forget from ``inbox``;
    hand each item to ``due`` when its time comes, or to ``dropped`` once it has used up
    its attempts; ``publish`` a snapshot after every change, for status.

    It wakes at the earliest due time, and at least every ``sweep`` seconds.
    """
    task_status.started()
    publish(queue.snapshot())
    while True:
        now = trio.current_time()
        for item in queue.take_due(now):
            await due(item)
        publish(queue.snapshot())
        next_due = queue.next_due()
        deadline = now + sweep if next_due is None else min(next_due, now + sweep)
        with trio.move_on_at(deadline):
            try:
                message = await inbox.receive()
            except trio.EndOfChannel:
                return
            match message:
                case ForgetPeer(peer):
                    queue.forget_peer(peer)
                case RetryItem() if queue.failed(message, trio.current_time()) is None:
                    await dropped(message)
            publish(queue.snapshot())
