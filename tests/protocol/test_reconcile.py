"""The reconciliation planner, run between two in-memory DAGs with no event loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.protocol import reconcile
from eidetica.protocol.dagview import walk
from eidetica.protocol.entry import Entry, StoreWrite, create_entry
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.reconcile import Responder, SyncRound
from eidetica.protocol.summary import summarize
from eidetica.storage.crdt import SetOp, encode_ops
from tests.builders import root_entry
from tests.protocol.peerpair import Side, sync

KEY = SigningKey(bytes(range(32)))


def grow(entries: list[Entry], parent_choices: list[list[int]], label: str) -> list[Entry]:
    """New entries on top of ``entries``; ``parent_choices[i]`` indexes into everything
    built so far (the given entries, then the new ones)."""
    built = list(entries)
    root = entries[0]
    for number, choice in enumerate(parent_choices):
        parents = sorted({built[i % len(built)].id: built[i % len(built)] for i in choice}.items())
        chosen = [entry for _, entry in parents]
        built.append(
            create_entry(
                KEY,
                tree=root.id,
                parents=[p.id for p in chosen],
                height=max(p.height for p in chosen) + 1,
                stores=[StoreWrite("d", (), encode_ops([SetOp((f"{label}{number}",), number)]))],
            )
        )
    return built[len(entries) :]


parent_lists = st.lists(st.lists(st.integers(0, 10_000), min_size=1, max_size=3), max_size=12)


@st.composite
def diverged(draw: st.DrawFn) -> tuple[list[Entry], list[Entry]]:
    """Two copies of a tree: a shared prefix, then branches of their own on each side
    (with merges among them)."""
    root = root_entry(KEY)
    shared = [root, *grow([root], draw(parent_lists), "s")]
    mine = grow(shared, draw(parent_lists), "a")
    theirs = grow(shared, draw(parent_lists), "b")
    return shared + mine, shared + theirs


@settings(max_examples=60, deadline=None)
@given(pair=diverged())
def test_two_diverged_sides_converge_in_two_round_trips(
    pair: tuple[list[Entry], list[Entry]],
) -> None:
    mine, theirs = pair
    tree = mine[0].id
    initiator, responder = Side(tree, mine), Side(tree, theirs)
    union = initiator.ids() | responder.ids()
    stats = sync(initiator, responder)
    assert initiator.ids() == responder.ids() == union
    assert stats.complete
    assert initiator.redundant == responder.redundant == 0
    # Two round trips, unless a summary's false positive forced a repair.
    assert stats.round_trips <= 2 + stats.repairs


@settings(max_examples=60, deadline=None)
@given(pair=diverged())
def test_a_peer_with_no_tips_lacks_what_a_walk_from_every_tip_finds(
    pair: tuple[list[Entry], list[Entry]],
) -> None:
    """The fresh peer's short cut (every id, in height order) gives what the walk
    would: everything this side holds, parents first."""
    mine, _ = pair
    side = Side(mine[0].id, mine)
    walked = walk(side.view, side.view.tips())
    assert reconcile.lacking(side.view, [], None) == walked
    empty_summary = summarize(Side(mine[0].id, []).view, min_height=0, salt=b"s" * 16)
    assert reconcile.lacking(side.view, [], empty_summary) == walked
    assert len(walked) == len(mine)


def test_bootstrap_and_incremental_are_the_same_exchange() -> None:
    entries = [root_entry(KEY)]
    entries += grow(entries, [[i] for i in range(30)], "x")
    full, empty = Side(entries[0].id, entries), Side(entries[0].id, [])
    stats = sync(empty, full)
    assert empty.ids() == full.ids()
    assert stats.round_trips == 1 and stats.complete
    assert empty.redundant == 0


def test_a_side_that_is_behind_gets_exactly_what_it_lacks() -> None:
    entries = [root_entry(KEY)]
    entries += grow(entries, [[i] for i in range(50)], "x")
    ahead, behind = Side(entries[0].id, entries), Side(entries[0].id, entries[:20])
    stats = sync(behind, ahead)
    assert behind.ids() == ahead.ids()
    assert stats.round_trips == 1
    missing_bytes = sum(len(e.raw) for e in entries[20:])
    assert stats.entry_bytes == missing_bytes


def test_large_transfers_go_in_bounded_pages() -> None:
    entries = [root_entry(KEY)]
    entries += grow(entries, [[random.Random(i).randrange(i + 1)] for i in range(2500)], "x")
    full, empty = Side(entries[0].id, entries), Side(entries[0].id, [])
    stats = sync(empty, full, serving=Responder(max_entries=1024))
    assert empty.ids() == full.ids()
    assert stats.messages.count("SyncResponse") == 3  # 1024 + 1024 + 453 entries
    assert empty.redundant == 0
    assert set(empty.held_after) == {0}  # every page came parents first


def test_a_page_holds_up_to_its_byte_cap_whatever_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [root_entry(KEY)]
    entries += grow(entries, [[i] for i in range(2500)], "x")
    full = Side(entries[0].id, entries)
    one_page = Side(entries[0].id, [])
    stats = sync(one_page, full)
    assert one_page.ids() == full.ids()
    assert stats.messages == ["SyncRequest", "SyncResponse"]  # 2,501 entries: one page
    limit = 100 * max(len(entry.raw) for entry in entries)
    monkeypatch.setattr(reconcile, "PAGE_BYTES", limit)
    paged = Side(entries[0].id, [])
    stats = sync(paged, full)
    assert paged.ids() == full.ids()
    assert sum(stats.page_bytes) == sum(len(entry.raw) for entry in entries)
    assert len(stats.page_bytes) >= 25
    assert max(stats.page_bytes) <= limit


def test_a_walk_with_a_limit_gives_up_past_it() -> None:
    root = root_entry(KEY)
    entries = [root, *grow([root], [[n] for n in range(10)], "a")]
    side = Side(root.id, entries)
    everything = walk(side.view, side.view.tips())
    assert len(everything) == 11
    assert walk(side.view, side.view.tips(), limit=11) == everything
    assert len(walk(side.view, side.view.tips(), limit=4)) == 5  # more than 4: there are more
    assert walk(side.view, side.view.tips(), stop=[entries[8].id], limit=2) == [
        entries[9].id,
        entries[10].id,
    ]


def test_the_responder_draws_its_resume_tokens_and_salts_from_its_random_bytes() -> None:
    entries = [root_entry(KEY)]
    entries += grow(entries, [[i] for i in range(5)], "x")
    ahead = [*entries, *grow(entries, [[5]], "y")]
    holder = Side(entries[0].id, entries)
    drawn: list[int] = []

    def random_bytes(count: int) -> bytes:
        drawn.append(count)
        return bytes([len(drawn)]) * count

    responder = Responder(max_entries=2, random_bytes=random_bytes)
    behind = Side(entries[0].id, entries[:1])
    paged = responder.answer(holder.view, SyncRound(behind.view, behind.tree).first(), peer="a")
    assert paged.more and paged.resume == b"\x01" * 16
    asker = Side(entries[0].id, ahead)
    answer = responder.answer(holder.view, SyncRound(asker.view, asker.tree).first(), peer="b")
    assert answer.summary is not None and answer.summary.salt == b"\x02" * 16
    assert drawn == [16, 16]
