"""The syncs running now, as the event bus tells them."""

from __future__ import annotations

import eidetica.events as news
from eidetica.actors.engine.status import SyncingStatus
from eidetica.actors.inflight import InFlight

A, B, TREE = "ed25519:A", "ed25519:B", "t" * 64


def test_a_sync_is_running_from_its_start_to_its_end_with_its_progress() -> None:
    running = InFlight()
    running.on_event(news.SyncStarted(A, TREE))
    assert running.statuses() == [SyncingStatus(A, TREE)]
    running.on_event(news.SyncProgress(A, TREE, 1024, 300_000, 20_000))
    running.on_event(news.SyncProgress(B, TREE, 5, 5, None))  # never started: ignored
    assert running.of_tree(TREE) == [SyncingStatus(A, TREE, 1024, 300_000, 20_000)]
    running.on_event(news.SyncFinished(A, TREE, 20_000, 1, 0, 20, 3.0, complete=True))
    assert running.statuses() == []


def test_a_failed_sync_or_a_lost_peer_ends_its_syncs() -> None:
    running = InFlight()
    running.on_event(news.SyncStarted(A, TREE))
    running.on_event(news.SyncStarted(B, TREE))
    running.on_event(news.SyncFailed(B, TREE, "reset"))
    assert [status.peer for status in running.statuses()] == [A]
    running.on_event(news.PeerLost(A, "gone"))
    assert running.statuses() == []
