"""The retry queue as plain state: failed pushes wait, back off, and fall due.

A failed push waits 2^attempts seconds (capped at 64, stretched by up to
``jitter``); after ``max_attempts`` it is dropped with a logged reason, since by then
the periodic sync is the better repair. Time is passed in; the retry actor
(``eidetica.actors.retry``) adds the clock and the inbox, and is the queue's one owner.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

MAX_DELAY = 64.0

MAX_QUEUED = 4096
"""Pushes queued at once. Each failed push of a local write queues one, so a node
that writes fast while a peer is away would queue without end; past this, a new
failure is dropped at once, like one past its attempts: periodic sync repairs both."""


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
        full = item.id not in self._due and len(self._due) >= MAX_QUEUED
        if item.attempts > self.max_attempts or full:
            self.dropped += 1
            self._due.pop(item.id, None)
            log.warning(
                "dropping push of %d entries of %s to %s %s; periodic sync will repair it",
                len(item.entry_ids),
                item.tree,
                item.peer,
                f"with {MAX_QUEUED} queued" if full else f"after {self.max_attempts} attempts",
            )
            return None
        delay = backoff(item.attempts) * (1 + self._jitter * self._rng.random())
        self._due[item.id] = (max(now + delay, item.not_before), item)
        return item

    def restore(self, item: RetryItem, now: float) -> None:
        """Queue an item read back after a restart: due at once."""
        self._due[item.id] = (now, item)

    def defer(self, item: RetryItem, until: float) -> None:
        """Queue an item that was due but not tried, for ``until``."""
        self._due[item.id] = (until, item)

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


@dataclass(frozen=True, slots=True)
class Deferred:
    """A due push that found its peer too busy to take it: due again at ``until``,
    with no attempt spent (it was never tried) and nothing written."""

    item: RetryItem
    until: float


RetryMessage = RetryItem | ForgetPeer | Deferred
"""What the retry actor's inbox carries: a push that failed, or a peer to forget."""


@dataclass(frozen=True, slots=True)
class RetrySnapshot:
    """The queue as the retry actor last published it, for status: never changed."""

    items: tuple[tuple[float, RetryItem], ...] = ()
    dropped: int = 0
