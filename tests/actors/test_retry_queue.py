"""The retry queue as plain state: back-off, the attempts' limit, and its cap."""

from __future__ import annotations

import random

import pytest

from eidetica.actors.engine import retries
from eidetica.actors.engine.retries import RetryItem, RetryQueue


def item(number: int) -> RetryItem:
    return RetryItem(f"r{number}", "peer", "tree", (f"e{number}",))


def test_an_item_past_its_attempts_is_dropped() -> None:
    queue = RetryQueue(max_attempts=2, rng=random.Random(0))
    first = queue.failed(item(1), now=0.0)
    assert first is not None and first.attempts == 1
    second = queue.failed(first, now=10.0)
    assert second is not None and len(queue) == 1
    assert queue.failed(second, now=20.0) is None
    assert len(queue) == 0 and queue.dropped == 1


def test_a_full_queue_drops_new_failures_and_keeps_the_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retries, "MAX_QUEUED", 3)
    queue = RetryQueue(rng=random.Random(0))
    queued = [queue.failed(item(n), now=0.0) for n in range(3)]
    assert len(queue) == 3
    assert queue.failed(item(99), now=0.0) is None  # a fourth push waits for periodic sync
    assert len(queue) == 3 and queue.dropped == 1
    again = queued[0]
    assert again is not None and queue.failed(again, now=5.0) is not None  # already queued
    assert len(queue) == 3
