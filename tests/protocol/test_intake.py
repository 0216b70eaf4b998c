"""The holding area: validated entries wait for their parents, within a bound."""

from __future__ import annotations

from eidetica.errors import MalformedEntry, WrongTree
from eidetica.protocol.intake import Intake
from eidetica.protocol.keys import SigningKey
from tests.builders import build_dag

KEY = SigningKey(bytes(range(32)))
CHAIN = build_dag(KEY, [[0], [1], [2], [3]])
TREE = CHAIN[0].id


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
    intake.offer(TREE, [e.raw for e in CHAIN[1:]])
    assert intake.held(TREE) == 2
    assert intake.dropped == 2
    # The newest arrivals are kept; the oldest were dropped and will be asked for again.
    assert intake.missing(TREE, set().intersection) == {CHAIN[2].id}


def test_entries_already_stored_are_not_released_again() -> None:
    intake = Intake()
    intake.offer(TREE, [CHAIN[0].raw])
    assert intake.release(TREE, {CHAIN[0].id}.intersection) == []
    assert intake.held(TREE) == 0


def test_the_holding_area_is_bounded_in_bytes_too() -> None:
    budget = len(CHAIN[3].raw) + len(CHAIN[4].raw)  # room for the newest two only
    intake = Intake(max_bytes=budget)
    intake.offer(TREE, [e.raw for e in CHAIN[1:]])
    assert intake.held(TREE) == 2 and intake.dropped == 2
    assert intake.held_bytes == len(CHAIN[3].raw) + len(CHAIN[4].raw)
    earlier = {e.id for e in CHAIN[:3]}
    assert [e.id for e in intake.release(TREE, earlier.intersection)] == [
        CHAIN[3].id,
        CHAIN[4].id,
    ]
    assert intake.held_bytes == 0
