"""Syncs that start from a cursor: no summary, only the difference, and a fallback.

A cursor is the tips both sides held after their last complete sync. The initiator
sends it instead of a summary; the responder walks down to it and to the initiator's
tips it knows. A side that does not hold the cursor makes the sync fall back to
summaries, which must still end with both sides holding the union.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.entry import Entry
from eidetica.protocol.messages import SyncRequest, SyncResponse
from eidetica.protocol.reconcile import Responder, SyncRound, beyond_cursor, cursor_request
from tests.builders import root_entry
from tests.protocol.peerpair import Side, sync
from tests.protocol.test_reconcile import KEY, grow, parent_lists

BOGUS = "f" * 64
"""An id no side holds."""


def _chain(length: int) -> list[Entry]:
    root = root_entry(KEY)
    return [root, *grow([root], [[n] for n in range(length)], "c")]


def _tips(entries: list[Entry]) -> list[str]:
    side = Side(entries[0].id, entries)
    return side.view.tips()


def test_catching_up_from_a_cursor_sends_the_new_entries_and_no_summary() -> None:
    shared = _chain(300)
    new = grow(shared, [[len(shared) - 1 + n] for n in range(20)], "n")
    behind, ahead = Side(shared[0].id, shared), Side(shared[0].id, shared + new)
    stats = sync(behind, ahead, cursor=_tips(shared))
    assert behind.ids() == ahead.ids()
    assert stats.complete and stats.round_trips == 1 and stats.summaries == 0
    new_bytes = sum(len(entry.raw) for entry in new)
    assert stats.entry_bytes == new_bytes and behind.redundant == 0
    # What the issue asks of an incremental sync: 1.2 x the new bytes + 2 KB.
    assert stats.bytes_sent <= 1.2 * new_bytes + 2048


def test_one_new_entry_costs_about_its_own_bytes() -> None:
    shared = _chain(5000)
    new = grow(shared, [[len(shared) - 1]], "n")
    summary_stats = sync(Side(shared[0].id, shared), Side(shared[0].id, shared + new))
    cursor_stats = sync(
        Side(shared[0].id, shared), Side(shared[0].id, shared + new), cursor=_tips(shared)
    )
    assert summary_stats.summaries == 1 and cursor_stats.summaries == 0
    assert cursor_stats.bytes_sent <= len(new[0].raw) + 2048 < summary_stats.bytes_sent


def test_an_initiator_that_does_not_hold_its_cursor_sends_a_summary() -> None:
    shared = _chain(10)
    side = Side(shared[0].id, shared)
    assert cursor_request(side.view, side.tree, [BOGUS]) is None
    assert cursor_request(side.view, side.tree, []) is None
    request = SyncRound(side.view, side.tree, common=[BOGUS, shared[3].id]).first()
    assert request.summary is not None and request.cursor == ()


def test_a_responder_that_lacks_the_cursor_asks_for_a_summary_and_the_sync_converges() -> None:
    shared = _chain(40)
    mine = grow(shared, [[40], [41]], "a")
    theirs = grow(shared[:20], [[19], [20]], "b")  # it never held shared[20:]
    initiator = Side(shared[0].id, shared + mine)
    responder = Side(shared[0].id, shared[:20] + theirs)
    union = initiator.ids() | responder.ids()
    stats = sync(initiator, responder, cursor=_tips(shared))
    assert initiator.ids() == responder.ids() == union
    assert stats.complete and stats.summaries >= 1
    assert stats.messages[:3] == ["SyncRequest", "SyncResponse", "SyncRequest"]
    assert stats.round_trips <= 3 + stats.repairs


def test_a_responder_that_knows_every_tip_needs_no_cursor() -> None:
    shared = _chain(30)
    new = grow(shared, [[30]], "n")
    behind, ahead = Side(shared[0].id, shared), Side(shared[0].id, shared + new)
    request = cursor_request(behind.view, behind.tree, _tips(shared))
    assert request is not None
    forged = SyncRequest(tree=request.tree, tips=request.tips, summary=None, cursor=(BOGUS,))
    answer = Responder().answer(ahead.view, forged, peer="p")
    assert not answer.ask_summary and len(answer.entries) == 1


def test_a_cursor_the_responder_does_not_hold_with_unknown_tips_is_answered_with_nothing() -> None:
    shared = _chain(30)
    mine = grow(shared, [[30]], "a")
    responder = Side(shared[0].id, shared[:10])
    request = SyncRequest(
        tree=shared[0].id, tips=(mine[0].id,), summary=None, cursor=(shared[20].id,)
    )
    answer = Responder().answer(responder.view, request, peer="p")
    assert answer.ask_summary and answer.entries == () and not answer.more


def test_a_peer_that_names_a_cursor_it_does_not_hold_only_gets_less() -> None:
    entries = _chain(50)
    holder = Side(entries[0].id, entries)
    # A liar claims the holder's tip: the walk stops at once, nothing is sent.
    assert beyond_cursor(holder.view, [], holder.view.tips()) == []
    # One that claims the root gets what a bootstrap gets: the tree, and no more.
    everything = beyond_cursor(holder.view, [], [entries[0].id])
    assert everything is not None and len(everything) == len(entries) - 1


def test_a_responder_that_asks_twice_for_a_summary_ends_the_round() -> None:
    shared = _chain(5)
    side = Side(shared[0].id, shared)
    round_ = SyncRound(side.view, side.tree, common=_tips(shared))
    first = round_.first()
    assert first.summary is None
    asking = SyncResponse(tree=side.tree, tips=(), entries=(), more=False, ask_summary=True)
    again = round_.next(asking, [])
    assert isinstance(again, SyncRequest) and again.summary is not None
    assert round_.next(asking, []) is None
    assert not round_.complete


def test_a_cursor_page_carries_thousands_of_entries_in_one_message() -> None:
    shared = _chain(10)
    new = grow(shared, [[len(shared) - 1 + n] for n in range(3000)], "n")
    behind, ahead = Side(shared[0].id, shared), Side(shared[0].id, shared + new)
    stats = sync(behind, ahead, cursor=_tips(shared))
    assert behind.ids() == ahead.ids()
    assert stats.round_trips == 1 and stats.messages == ["SyncRequest", "SyncResponse"]
    assert stats.bytes_sent <= 1.2 * sum(len(e.raw) for e in new) + 2048


# Property: whatever the cursor, both sides end with the union.


@st.composite
def cursored(draw: st.DrawFn) -> tuple[list[Entry], list[Entry], list[str], bool]:
    """Two copies of a tree (the responder's shared part may be cut short, as if it
    lost data) with branches of their own, and a cursor: fresh (the shared tips),
    stale (older shared entries), an entry of one side only, or a bogus id. Last,
    whether the cursor is fresh and both hold all of the shared part."""
    root = root_entry(KEY)
    shared = [root, *grow([root], draw(parent_lists), "s")]
    cut = draw(st.integers(1, len(shared)))
    mine = grow(shared, draw(parent_lists), "a")
    theirs = grow(shared[:cut], draw(parent_lists), "b")
    initiator, responder = shared + mine, shared[:cut] + theirs
    kind = draw(st.sampled_from(["fresh", "stale", "mine", "theirs", "bogus", "mixed"]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    pool = {
        "fresh": _tips(shared),
        "stale": [e.id for e in shared],
        "mine": [e.id for e in initiator],
        "theirs": [e.id for e in responder],
        "bogus": [BOGUS],
        "mixed": [e.id for e in initiator + responder] + [BOGUS],
    }[kind]
    cursor = pool if kind == "fresh" else rng.sample(pool, rng.randint(1, min(3, len(pool))))
    return initiator, responder, cursor, kind == "fresh" and cut == len(shared)


@settings(max_examples=150, deadline=None)
@given(case=cursored())
def test_a_sync_from_any_cursor_leaves_both_sides_with_the_union(
    case: tuple[list[Entry], list[Entry], list[str], bool],
) -> None:
    mine, theirs, cursor, fresh = case
    tree = mine[0].id
    initiator, responder = Side(tree, mine), Side(tree, theirs)
    union = initiator.ids() | responder.ids()
    stats = sync(initiator, responder, cursor=cursor)
    assert initiator.ids() == responder.ids() == union
    assert stats.complete
    # A fallback costs one round trip more than the summary path's two.
    assert stats.round_trips <= 3 + stats.repairs
    if fresh:
        # A good cursor: no summary, nothing sent twice, two round trips at most.
        assert stats.summaries == 0 and stats.repairs == 0
        assert initiator.redundant == responder.redundant == 0
        assert stats.round_trips <= 2


def test_the_cursor_request_round_trips_through_the_codec() -> None:
    shared = _chain(3)
    side = Side(shared[0].id, shared)
    request = cursor_request(side.view, side.tree, _tips(shared), need=[BOGUS])
    assert request is not None
    assert MSGPACK.decode(MSGPACK.encode(request)).body == request
