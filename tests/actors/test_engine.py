"""The engine's transitions, one at a time, with no event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import eidetica.events as news
from eidetica.actors.engine import effects as fx
from eidetica.actors.engine import events as ev
from eidetica.actors.engine.core import Restored
from eidetica.actors.engine.jobs import ProbeJob, PushJob, SyncJob
from eidetica.actors.engine.peers import PeerRecord, PeerState
from eidetica.actors.engine.retries import RetryItem
from eidetica.errors import SyncError
from eidetica.protocol.keys import SigningKey
from tests.actors.engine_helpers import (
    SYNC_TREE,
    TREE,
    FakeReply,
    answered,
    engine,
    of,
    up,
)
from tests.builders import root_entry

A, Z = "ed25519:A", "ed25519:Z"


def test_the_engine_imports_no_trio_and_does_no_io() -> None:
    folder = Path(__file__).parents[2] / "eidetica" / "actors" / "engine"
    for module in folder.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        banned = {
            name for name in imported if name.split(".")[0] in {"trio", "sqlite3", "socket", "time"}
        }
        assert not banned, f"{module.name} imports {banned}"
        assert not {
            n
            for n in imported
            if n.startswith(("eidetica.storage", "eidetica.actors."))
            and not n.startswith("eidetica.actors.engine")
        }, module.name


def test_kept_peers_are_dialled_at_once_on_restore_and_waited_for_without_an_address() -> None:
    made, effects = engine((Restored(A, "ws://a", frozenset({TREE})), Restored(Z, "", frozenset())))
    assert made.peers[A].state is PeerState.DIALLING and made.peers[Z].state is PeerState.DOWN
    assert of(fx.StartPeer, effects) == [fx.StartPeer(A)]
    assert of(fx.Dial, effects) == [fx.Dial("ws://a", A, after=0.0, owned=True)]


def test_add_peer_persists_then_dials_and_redials_with_backoff_up_to_the_cap() -> None:
    made, _ = engine()
    reply = FakeReply()
    effects = made.handle(ev.AddPeer(A, "ws://a", reply), 0.0)
    assert of(fx.Persist, effects) == [fx.Persist("add_peer", (A, "ws://a"))]
    assert of(fx.Dial, effects)[0].after == 0.0
    assert answered(effects) == [(True, None)]
    waits = []
    for _ in range(9):
        effects = made.handle(ev.DialFailed("ws://a", A, OSError("refused")), 0.0)
        waits.append(of(fx.Dial, effects)[0].after)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert made.peers[A].state is PeerState.DIALLING


def test_a_link_up_after_dialling_catches_up_and_stops_the_pending_dial() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    effects = up(made, A, "ws://a", now=5.0)
    assert made.peers[A].state is PeerState.UP and made.peers[A].link == "ws://a"
    assert of(fx.StopDial, effects) == [fx.StopDial(A)]
    assert of(fx.UseLink, effects) == [fx.UseLink(A, "ws://a", close_previous=False)]
    [queued] = of(fx.Queue, effects)
    assert isinstance(queued.job, SyncJob) and queued.job.trees == (TREE,)


def test_a_lost_link_is_redialled_and_one_that_flaps_waits_longer_each_time() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset()),))
    up(made, A, "ws://a", now=0.0)
    waits = []
    for round_ in range(4):
        effects = made.handle(ev.LinkClosed("ws://a", "gone"), 10.0 * round_ + 1)
        assert made.peers[A].state is PeerState.LOST
        waits.append(of(fx.Dial, effects)[0].after)
        up(made, A, "ws://a", now=10.0 * round_ + 2)  # answers, then drops again
    assert waits == [1.0, 2.0, 4.0, 8.0]
    effects = made.handle(ev.LinkClosed("ws://a", "gone"), 1000.0)  # after a steady spell
    assert of(fx.Dial, effects)[0].after == 1.0


def test_a_peer_that_only_dialled_us_is_forgotten_when_its_link_closes() -> None:
    made, _ = engine()
    made.handle(ev.LinkUp("ws-in://1", A), 0.0)
    effects = made.handle(ev.LinkClosed("ws-in://1", "gone"), 1.0)
    assert A not in made.peers
    assert of(fx.StopPeer, effects) == [fx.StopPeer(A, close_link=False)]
    assert of(fx.Dial, effects) == []


def test_a_related_peer_with_no_address_waits_down_for_it_to_dial_again() -> None:
    made, _ = engine()
    made.handle(ev.LinkUp("ws-in://1", A), 0.0)
    made.handle(ev.CreateRelationship(A, TREE, FakeReply()), 0.0)
    made.handle(ev.LinkClosed("ws-in://1", "gone"), 1.0)
    assert made.peers[A].state is PeerState.DOWN
    [(ok, error)] = answered(made.handle(ev.SyncWithPeer(A, FakeReply()), 2.0))
    assert not ok and "has not dialled in" in str(error)
    made.handle(ev.LinkUp("ws-in://2", A), 3.0)
    assert made.peers[A].state is PeerState.UP and made.peers[A].trees == {TREE}


def test_a_removed_peer_is_not_taken_back_unless_dialled_on_purpose() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    up(made, A, "ws://a")
    reply = FakeReply()
    effects = made.handle(ev.RemovePeer(A, reply), 1.0)
    assert [e.op for e in of(fx.Persist, effects)] == ["remove_peer", "set_removed"]
    assert of(fx.StopPeer, effects) == [fx.StopPeer(A, close_link=True)]
    assert of(fx.ForgetRetries, effects) == [fx.ForgetRetries(A)]
    effects = made.handle(ev.LinkUp("ws://a", A), 2.0)  # a dial that outlived the removal
    assert A not in made.peers and of(fx.DropLink, effects) == [fx.DropLink("ws://a", close=True)]
    made.handle(ev.PeerReachable(A, "ws-in://3", TREE), 3.0)
    assert A not in made.peers
    effects = made.handle(ev.LinkUp("ws://a", A, chosen=True), 4.0)
    assert made.peers[A].up and fx.Persist("set_removed", (A, False)) in effects


def test_commands_for_peers_that_cannot_take_them_fail_their_reply_and_change_nothing() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    cases: list[tuple[ev.Event, str]] = [
        (ev.SyncWithPeer(Z, FakeReply()), "unknown peer"),
        (ev.SyncWithPeer(A, FakeReply()), "being dialled"),
        (ev.CreateRelationship(A, "not-a-tree", FakeReply()), "not a tree id"),
        (ev.SendEntries(A, "b" * 64, ("x",), FakeReply()), "add_tree_sync first"),
        (ev.RemovePeer(Z, FakeReply()), "unknown peer"),
    ]
    for event, why in cases:
        effects = made.handle(event, 0.0)
        [(ok, error)] = answered(effects)
        assert not ok and isinstance(error, SyncError) and why in str(error)
        assert len(effects) == 1


def test_a_commit_goes_to_linked_peers_of_its_tree_only_and_never_the_sync_tree() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})), Restored(Z, "ws://z", frozenset())))
    up(made, A, "ws://a")
    up(made, Z, "ws://z")
    entry = root_entry(SigningKey.generate())
    effects = made.handle(ev.QueueEntry(TREE, entry), 1.0)
    assert of(fx.Queue, effects) == [fx.Queue(A, PushJob(TREE, (entry.id,)))]
    assert made.handle(ev.QueueEntry(SYNC_TREE, entry), 1.0) == []
    assert made.handle(ev.EntriesReceived(TREE, ("e",), A), 1.0) == []  # not back to A


def test_of_two_links_between_two_nodes_both_keep_the_one_the_smaller_key_dialled() -> None:
    made, _ = engine()
    made.handle(ev.LinkUp("ws://a", A), 0.0)  # we dialled A (A < ME)...
    effects = made.handle(ev.LinkUp("ws-in://7", A), 1.0)  # ...and A dialled us: keep A's
    assert made.peers[A].link == "ws-in://7"
    assert of(fx.UseLink, effects) == [fx.UseLink(A, "ws-in://7", close_previous=True)]
    made.handle(ev.LinkUp("ws://z", Z), 0.0)  # we dialled Z (ME < Z): ours stays
    effects = made.handle(ev.LinkUp("ws-in://8", Z), 1.0)
    assert made.peers[Z].link == "ws://z"
    assert of(fx.DropLink, effects) == [fx.DropLink("ws-in://8", close=False)]


def test_a_peer_that_dialled_us_is_linked_back_once_and_a_one_shot_caller_is_registered() -> None:
    made, _ = engine()
    first = made.handle(ev.PeerReachable(A, "ws-in://1", None), 0.0)
    again = made.handle(ev.PeerReachable(A, "ws-in://1", TREE), 0.0)
    assert of(fx.Dial, first) == [fx.Dial("ws-in://1", A)] and of(fx.Dial, again) == []
    made.handle(ev.PeerReachable(Z, None, None), 0.0)
    assert made.peers[Z].state is PeerState.DOWN and not made.peers[Z].kept
    made.handle(ev.CreateRelationship(Z, TREE, FakeReply()), 0.0)  # works: it is known
    assert made.peers[Z].kept and made.view().relates(Z, TREE)


def test_strangers_beyond_the_cap_are_forgotten_oldest_first() -> None:
    made, _ = engine()
    for n in range(5):
        made.handle(ev.PeerReachable(f"ed25519:S{n}", None, None), float(n))
    assert sorted(made.peers) == ["ed25519:S2", "ed25519:S3", "ed25519:S4"]


def test_a_retry_falls_due_for_a_gone_a_linked_and_a_lost_peer() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    item = RetryItem("r1", A, TREE, ("e",))
    assert of(fx.ToRetry, made.handle(ev.RetryDue(item), 0.0)) == [fx.ToRetry(item)]
    up(made, A, "ws://a")
    assert of(fx.Queue, made.handle(ev.RetryDue(item), 0.0)) == [
        fx.Queue(A, PushJob(TREE, ("e",), item))
    ]
    gone = RetryItem("r2", Z, TREE, ("e",))
    assert made.handle(ev.RetryDue(gone), 0.0) == [
        fx.Persist("drop_retry", ("r2",)),
        fx.Announce(news.RetryDropped(Z, TREE, 1, 0)),
    ]
    effects = made.handle(ev.PushFailed(item), 0.0)
    assert effects == [
        fx.Persist("keep_retry", (item,)),
        fx.ToRetry(item),
        fx.Announce(news.PushFailed(A, TREE, 1, 1)),
    ]


def test_an_idle_sync_writes_nothing_and_one_that_moved_entries_writes_its_records() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    up(made, A, "ws://a")
    moved = made.handle(ev.SyncDone(A, TREE, True, ("t1",), 3, 0.5, at=100.0), 0.0)
    assert [e.op for e in of(fx.Persist, moved)] == ["set_cursor", "record_sync"]
    assert made.handle(ev.SyncDone(A, TREE, True, ("t1",), 0, 0.5, at=200.0), 0.0) == []
    assert made.last_sync[A, TREE] == 200.0
    [queued] = of(fx.Queue, made.handle(ev.SyncWithPeer(A, None), 0.0))
    assert isinstance(queued.job, SyncJob) and queued.job.common == ((TREE, ("t1",)),)


def test_a_tree_taken_in_is_related_with_the_peer_that_brought_it() -> None:
    made, _ = engine()
    effects = made.handle(ev.TreeTaken(A, TREE), 0.0)
    assert [e.op for e in of(fx.Persist, effects)] == ["add_peer", "add_relationship"]
    assert made.peers[A].kept and made.view().relates(A, TREE)


def test_the_connection_check_probes_linked_peers_only() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset()), Restored(Z, "ws://z", frozenset())))
    up(made, A, "ws://a")
    assert made.handle(ev.CheckConnections(), 0.0) == [fx.Queue(A, ProbeJob())]


def test_a_record_refuses_moves_its_lifecycle_does_not_have() -> None:
    record = PeerRecord(A, PeerState.DIALLING)
    with pytest.raises(SyncError, match="no move from dialling to lost"):
        record.move(PeerState.LOST)
    record.move(PeerState.UP)
    record.move(PeerState.LOST)
    with pytest.raises(SyncError):
        record.move(PeerState.DOWN)


def test_a_second_link_at_the_live_links_address_leaves_that_connection_open() -> None:
    made, _ = engine()
    up(made, A, "ws://a")
    effects = made.handle(ev.LinkUp("ws://a", A, FakeReply(), chosen=True), 1.0)
    assert of(fx.DropLink, effects) == [fx.DropLink("ws://a", close=False)]
    assert made.peers[A].link == "ws://a"


def test_links_up_and_lost_and_up_again_are_each_logged_and_announced_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset()),))
    with caplog.at_level("INFO"):
        effects = up(made, A, "ws://a")
        effects += made.handle(ev.LinkClosed("ws://a", "gone"), 1.0)
        effects += up(made, A, "ws://a", now=2.0)
    assert [effect.event for effect in of(fx.Announce, effects)] == [
        news.PeerLinked(A, "ws://a"),
        news.PeerLost(A, "gone", redialling=True),
        news.PeerLinked(A, "ws://a", again=True),
    ]
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        f"linked to peer {A} at ws://a",
        f"link to peer {A} lost (gone); redialling ws://a",
        f"linked to peer {A} again, at ws://a",
    ]


def test_a_push_taken_whole_or_entries_received_move_the_cursor_in_memory_only() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    up(made, A, "ws://a")
    effects = made.handle(ev.Pushed(A, TREE, 1, head="e1"), 1.0)
    assert made.cursors[(A, TREE)] == ("e1",)
    assert fx.Persist("set_cursor", (A, TREE, ("e1",))) not in effects
    made.handle(ev.Pushed(A, TREE, 1), 2.0)  # not taken whole: says nothing of the peer
    assert made.cursors[(A, TREE)] == ("e1",)
    effects = made.handle(ev.EntriesReceived(TREE, ("e2", "e3"), A), 3.0)
    assert made.cursors[(A, TREE)] == ("e3",)
    assert not of(fx.Persist, effects)
    made.handle(ev.EntriesReceived("b" * 64, ("x",), A), 4.0)  # a tree not synced with A
    assert (A, "b" * 64) not in made.cursors


def test_a_sync_ending_where_a_push_left_the_cursor_still_writes_its_records() -> None:
    made, _ = engine((Restored(A, "ws://a", frozenset({TREE})),))
    up(made, A, "ws://a")
    made.handle(ev.Pushed(A, TREE, 1, head="c1"), 1.0)
    done = ev.SyncDone(A, TREE, ok=True, tips=("c1",), received=0, duration=0.1, at=5.0)
    persisted = [effect.op for effect in of(fx.Persist, made.handle(done, 2.0))]
    assert persisted == ["set_cursor", "record_sync"]
    assert not of(fx.Persist, made.handle(done, 3.0))  # idle, where the last sync ended
