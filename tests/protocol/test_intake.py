"""The holding area: validated entries wait for their parents, within bounds per sender
and per node."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.errors import MalformedEntry, WrongTree
from eidetica.protocol.entry import Entry
from eidetica.protocol.intake import Intake, footprint
from eidetica.protocol.keys import SigningKey
from tests.builders import build_dag, child_entry, root_entry

KEY = SigningKey(bytes(range(32)))
CHAIN = build_dag(KEY, [[0], [1], [2], [3]])
TREE = CHAIN[0].id
NOTHING_STORED: set[str] = set()
STRANGER = "ed25519:stranger"
FRIEND = "ed25519:friend"


def chain_on(key: SigningKey, root: Entry, length: int) -> list[Entry]:
    """``length`` entries by ``key`` after ``root``, each the parent of the next."""
    entries = [root]
    for index in range(1, length + 1):
        entries.append(child_entry(key, root, [entries[-1]], f"k{index % 7}", index))
    return entries[1:]


ELSEWHERE = chain_on(SigningKey(bytes(range(3, 35))), CHAIN[0], 4)
"""Entries of TREE by another author, each waiting for the one before."""


def raws(entries: Iterable[Entry]) -> list[bytes]:
    return [e.raw for e in entries]


def ids(entries: Iterable[Entry]) -> list[str]:
    return [e.id for e in entries]


def test_entries_are_released_parents_first_once_parents_are_stored() -> None:
    intake = Intake()
    assert intake.offer(TREE, [e.raw for e in reversed(CHAIN[2:])]) == []
    stored: set[str] = set()
    assert intake.release(TREE, stored.intersection) == []
    assert intake.missing(TREE, stored.intersection) == {CHAIN[1].id}
    assert intake.held(TREE) == 3
    intake.offer(TREE, [CHAIN[0].raw, CHAIN[1].raw])
    released = intake.release(TREE, stored.intersection)
    assert [e.id for e in released] == [e.id for e in CHAIN]
    assert intake.held(TREE) == 0


def test_bad_entries_are_rejected_with_reasons() -> None:
    intake = Intake()
    other_tree = build_dag(KEY, [])[0]
    rejections = intake.offer(TREE, [b"\x00", other_tree.raw])
    assert [type(r.error) for r in rejections] == [MalformedEntry, WrongTree]
    assert "tree" in rejections[1].reason
    assert intake.held(TREE) == 0


def test_the_holding_area_is_bounded() -> None:
    intake = Intake(max_held=2)
    intake.offer(TREE, raws(CHAIN[1:]))
    intake.release(TREE, NOTHING_STORED.intersection)
    assert intake.held(TREE) == 2
    assert intake.dropped == 2
    # The newest arrivals are kept; the oldest were dropped and will be asked for again.
    assert intake.missing(TREE, NOTHING_STORED.intersection) == {CHAIN[2].id}


def test_entries_already_stored_are_not_released_again() -> None:
    intake = Intake()
    intake.offer(TREE, [CHAIN[0].raw])
    assert intake.release(TREE, {CHAIN[0].id}.intersection) == []
    assert intake.held(TREE) == 0
    assert intake.held_bytes == 0 and intake.held_by(None) == 0


def test_the_holding_area_is_bounded_in_bytes_too() -> None:
    budget = footprint(CHAIN[3]) + footprint(CHAIN[4])  # room for the newest two only
    intake = Intake(max_bytes=budget)
    intake.offer(TREE, raws(CHAIN[1:]))
    intake.release(TREE, NOTHING_STORED.intersection)
    assert intake.held(TREE) == 2 and intake.dropped == 2
    assert intake.held_bytes == budget
    earlier = {e.id for e in CHAIN[:3]}
    assert ids(intake.release(TREE, earlier.intersection)) == ids(CHAIN[3:])
    assert intake.held_bytes == 0


def test_held_entries_count_for_more_than_their_encoded_bytes() -> None:
    intake = Intake()
    intake.offer(TREE, raws(CHAIN[2:]))
    assert intake.held_bytes > 2 * sum(len(e.raw) for e in CHAIN[2:])


def test_a_strangers_flood_leaves_other_senders_entries_in_place() -> None:
    root = CHAIN[0]
    friendly = chain_on(KEY, root, 11)
    flood = chain_on(SigningKey(bytes(range(1, 33))), root, 20_001)[1:]  # its first never sent
    intake = Intake()
    stored = {root.id}
    intake.offer(TREE, raws(friendly[1:]), source=FRIEND)
    assert intake.release(TREE, stored.intersection) == []
    for start in range(0, len(flood), 1024):  # pages, as messages carry them
        intake.offer(TREE, raws(flood[start : start + 1024]), source=STRANGER)
        assert intake.release(TREE, stored.intersection) == []
    assert intake.held_by(FRIEND) == 10
    assert intake.held_by(STRANGER) == 1_000
    assert intake.dropped == 19_000
    intake.offer(TREE, [friendly[0].raw], source=FRIEND)
    assert ids(intake.release(TREE, stored.intersection)) == ids(friendly)
    assert intake.held_by(FRIEND) == 0 and intake.held(TREE) == 1_000


def test_a_sender_over_its_entry_quota_loses_its_own_oldest() -> None:
    intake = Intake(max_held_per_source=2)
    intake.offer(TREE, [CHAIN[4].raw], source=FRIEND)
    intake.offer(TREE, raws(CHAIN[2:4]), source=STRANGER)
    intake.offer(TREE, [CHAIN[4].raw], source=STRANGER)  # held already, for the friend
    intake.release(TREE, NOTHING_STORED.intersection)
    assert (intake.held_by(FRIEND), intake.held_by(STRANGER), intake.dropped) == (1, 2, 0)
    longer = chain_on(KEY, CHAIN[0], 8)  # CHAIN's entries, then four more
    intake.offer(TREE, raws(longer[5:]), source=STRANGER)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert intake.held_by(FRIEND) == 1 and intake.held_by(STRANGER) == 2
    assert intake.dropped == 3
    missing = intake.missing(TREE, NOTHING_STORED.intersection)
    assert missing == {CHAIN[3].id, longer[5].id}


def test_a_lowered_quota_applies_at_the_next_release() -> None:
    intake = Intake()
    intake.offer(TREE, raws(CHAIN[2:5]), source=STRANGER)
    intake.release(TREE, NOTHING_STORED.intersection)  # measured, and within the quota
    intake.set_quota(1)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert intake.held_by(STRANGER) == 1 and intake.dropped == 2
    with pytest.raises(ValueError, match="at least 1"):
        intake.set_quota(0)


def test_a_sender_over_its_byte_quota_loses_its_own_oldest() -> None:
    budget = footprint(CHAIN[3]) + footprint(CHAIN[4])
    intake = Intake(max_bytes_per_source=budget)
    intake.offer(TREE, [CHAIN[2].raw], source=FRIEND)
    intake.offer(TREE, raws(CHAIN[1:]), source=STRANGER)  # CHAIN[2] stays the friend's
    intake.release(TREE, NOTHING_STORED.intersection)
    assert intake.held_by(FRIEND) == 1 and intake.held_by(STRANGER) == 2
    assert intake.held_bytes_by(STRANGER) == budget
    assert intake.held_bytes == budget + footprint(CHAIN[2])
    assert intake.dropped == 1
    assert CHAIN[1].id in intake.missing(TREE, NOTHING_STORED.intersection)


def test_a_batch_sent_parents_first_is_not_cut_by_its_senders_quota() -> None:
    intake = Intake(max_held_per_source=1, max_bytes_per_source=1)
    intake.offer(TREE, raws(CHAIN), source=FRIEND)
    assert ids(intake.release(TREE, NOTHING_STORED.intersection)) == ids(CHAIN)
    assert intake.dropped == 0


def test_the_node_wide_cap_drops_from_the_biggest_holder_first() -> None:
    intake = Intake(max_held=4)
    intake.offer(TREE, [ELSEWHERE[1].raw], source=FRIEND)
    intake.offer(TREE, raws(CHAIN[2:]), source=STRANGER)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert (intake.held_by(STRANGER), intake.held_by(FRIEND)) == (3, 1)
    intake.offer(TREE, [CHAIN[1].raw], source=None)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert (intake.held_by(STRANGER), intake.held_by(FRIEND), intake.held_by(None)) == (2, 1, 1)
    assert intake.dropped == 1
    # The stranger's oldest (CHAIN[2]) went: CHAIN[1] is held, its child is not.
    assert CHAIN[2].id in intake.missing(TREE, NOTHING_STORED.intersection)


def test_the_biggest_holder_is_judged_by_what_it_holds_now() -> None:
    intake = Intake(max_held=4)
    intake.offer(TREE, raws(CHAIN[2:]), source=STRANGER)
    intake.forget(ids(CHAIN[2:4]))  # the stranger was the biggest; now it holds one
    intake.offer(TREE, raws(ELSEWHERE[1:]), source=FRIEND)
    intake.release(TREE, NOTHING_STORED.intersection)
    intake.offer(TREE, [CHAIN[1].raw], source=None)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert (intake.held_by(STRANGER), intake.held_by(FRIEND), intake.held_by(None)) == (1, 2, 1)
    assert ELSEWHERE[1].id in intake.missing(TREE, NOTHING_STORED.intersection)


def test_the_node_wide_byte_cap_drops_from_the_biggest_holder_first() -> None:
    other = ELSEWHERE[1]
    budget = footprint(CHAIN[4]) + footprint(other) + footprint(CHAIN[1])
    intake = Intake(max_bytes=budget)
    intake.offer(TREE, [other.raw], source=FRIEND)
    intake.offer(TREE, raws(CHAIN[3:]), source=STRANGER)
    intake.offer(TREE, [CHAIN[1].raw], source=None)
    intake.release(TREE, NOTHING_STORED.intersection)
    assert (intake.held_by(STRANGER), intake.held_by(FRIEND), intake.held_by(None)) == (1, 1, 1)
    assert intake.held_bytes == budget and intake.dropped == 1


def test_an_entry_offered_by_two_senders_is_held_once_for_the_first() -> None:
    intake = Intake()
    intake.offer(TREE, [CHAIN[3].raw], source=FRIEND)
    intake.offer(TREE, [CHAIN[3].raw], source=STRANGER)
    assert intake.held(TREE) == 1
    assert (intake.held_by(FRIEND), intake.held_by(STRANGER)) == (1, 0)
    assert intake.held_bytes_by(FRIEND) == intake.held_bytes == footprint(CHAIN[3])
    intake.forget([CHAIN[3].id])
    assert intake.held_bytes == 0 and intake.held_by(FRIEND) == 0 and intake.held(TREE) == 0


# Property: any interleaving of offers, releases and forgets keeps the accounting exact.

OTHER_KEY = SigningKey(bytes(range(2, 34)))
POOLS = [
    build_dag(KEY, [[0], [1], [1], [2, 3], [4], [5], [0], [7], [8]]),
    build_dag(OTHER_KEY, [[0], [1], [2], [1], [4]]),
]
TREES = [pool[0].id for pool in POOLS]
SOURCES: list[str | None] = [None, "ed25519:a", "ed25519:b", "ed25519:c"]
PER_SOURCE = 3
PER_SOURCE_BYTES = 2 * max(footprint(e) for pool in POOLS for e in pool) + 200
NODE_HELD = 6
NODE_BYTES = 5 * min(footprint(e) for pool in POOLS for e in pool)


@dataclass(frozen=True)
class Offer:
    source: str | None
    tree: int
    indexes: list[int]


@dataclass(frozen=True)
class Release:
    tree: int


@dataclass(frozen=True)
class Forget:
    tree: int
    indexes: list[int]


trees = st.sampled_from([0, 1])
steps = st.one_of(
    st.builds(Offer, st.sampled_from(SOURCES), trees, st.lists(st.integers(0, 9), max_size=6)),
    st.builds(Release, trees),
    st.builds(Forget, trees, st.lists(st.integers(0, 9), max_size=4)),
)


class Census:
    """A stored query that calls every entry stored and notes what a release asks about
    first: the entries of the tree it holds. Releasing with it empties the tree."""

    def __init__(self) -> None:
        self.held: list[str] = []

    def __call__(self, asked: Iterable[str]) -> set[str]:
        asked = list(asked)
        if not self.held:
            self.held = asked
        return set(asked)


def pick(pool: Sequence[Entry], indexes: Iterable[int]) -> list[Entry]:
    return [pool[i % len(pool)] for i in indexes]


def apply(intake: Intake, stored: dict[str, set[str]], step: Offer | Release | Forget) -> None:
    root_id = TREES[step.tree]
    match step:
        case Offer(source, tree, indexes):
            intake.offer(root_id, raws(pick(POOLS[tree], indexes)), source=source)
        case Release():
            stored[root_id].update(ids(intake.release(root_id, stored[root_id].intersection)))
            check_caps(intake)
        case Forget(tree, indexes):
            intake.forget(ids(pick(POOLS[tree], indexes)))


def check_totals(intake: Intake) -> None:
    assert sum(intake.held_by(s) for s in SOURCES) == sum(intake.held(t) for t in TREES)
    assert sum(intake.held_bytes_by(s) for s in SOURCES) == intake.held_bytes


def check_caps(intake: Intake) -> None:
    for source in SOURCES:
        assert intake.held_by(source) <= PER_SOURCE
        assert intake.held_bytes_by(source) <= PER_SOURCE_BYTES
    assert sum(intake.held(t) for t in TREES) <= NODE_HELD
    assert intake.held_bytes <= NODE_BYTES


def check_census(intake: Intake) -> None:
    """Empty the area tree by tree, checking that each tree's held entries account for
    exactly what the totals lose."""
    by_id = {e.id: e for pool in POOLS for e in pool}
    for root_id in TREES:
        count, held_bytes = intake.held(root_id), intake.held_bytes
        census = Census()
        assert intake.release(root_id, census) == []
        assert len(census.held) == count
        assert held_bytes - intake.held_bytes == sum(footprint(by_id[i]) for i in census.held)
    assert intake.held_bytes == 0
    assert all(intake.held_by(s) == 0 and intake.held_bytes_by(s) == 0 for s in SOURCES)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(steps, max_size=25))
def test_accounting_is_exact_and_quotas_hold_whatever_the_order(
    steps: list[Offer | Release | Forget],
) -> None:
    intake = Intake(
        max_held=NODE_HELD,
        max_bytes=NODE_BYTES,
        max_held_per_source=PER_SOURCE,
        max_bytes_per_source=PER_SOURCE_BYTES,
    )
    stored = {root_id: {root_id} for root_id in TREES}
    for step in [*steps, Release(0)]:  # the last release applies the caps to any offer
        apply(intake, stored, step)
        check_totals(intake)
    check_census(intake)


def test_a_root_is_released_at_once_without_a_parent() -> None:
    intake = Intake()
    root = root_entry(KEY)
    intake.offer(root.id, [root.raw], source=FRIEND)
    assert ids(intake.release(root.id, NOTHING_STORED.intersection)) == [root.id]
