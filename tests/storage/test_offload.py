"""Checking received entries in worker threads gives what checking them in one piece
gives, in the same order, with a signature check for each run's heads only; under a
MockClock it stays on the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.protocol import intake as intake_module
from eidetica.protocol.entry import Entry, check_signature
from eidetica.protocol.intake import Checked, Read, Rejection, check
from eidetica.protocol.keys import SigningKey
from eidetica.storage import offload
from tests.builders import build_entries, child_entry, expected_tips, root_entry

ENTRIES = build_entries(120)
TREE = ENTRIES[1].tree_id
OTHER = build_entries(3)[2]


def _spoiled(entry: Entry, how: str) -> tuple[bytes, str | None]:
    """An entry's bytes, spoiled ``how``, and the id a sender would claim."""
    if how == "signature":
        bad = msgspec.structs.replace(entry, signature=bytes(64))
        return bad.raw, None
    if how == "claim":
        return entry.raw, OTHER.id
    if how == "tree":
        return OTHER.raw, None
    return entry.raw, entry.id


def _summary(result: tuple[list[Entry], list[Rejection]]) -> tuple[list[str], list[object]]:
    valid, rejected = result
    return [e.id for e in valid], [(r.id, type(r.error).__name__) for r in rejected]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["good", "signature", "claim", "tree"]), min_size=1, max_size=120))
def test_threads_give_what_one_piece_gives(kinds: list[str]) -> None:
    spoiled = [_spoiled(entry, kind) for entry, kind in zip(ENTRIES[1:], kinds, strict=False)]
    raws, ids = [raw for raw, _ in spoiled], [claim for _, claim in spoiled]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offload, "INLINE_BELOW", 1)
        patch.setattr(offload, "WORKERS", 3)
        threaded = trio.run(offload.check_entries, TREE, raws, ids)
    assert _summary(threaded) == _summary(check(TREE, raws, ids))


def test_a_mock_clock_keeps_the_checks_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_threads(*args: object, **kwargs: object) -> object:
        raise AssertionError("a thread was started under a MockClock")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)
    raws = [entry.raw for entry in ENTRIES[1:]]
    clock = trio.testing.MockClock(autojump_threshold=0)
    valid, rejected = trio.run(offload.check_entries, TREE, raws, None, clock=clock)
    assert len(valid) == len(raws) and not rejected


async def test_a_batch_in_order_skips_the_holding_area_and_one_out_of_order_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull's pages come parents first: they need no holding. A batch whose parents
    are missing still waits, and is stored when they come."""
    raws = [entry.raw for entry in ENTRIES]
    async with eidetica.open_instance(None) as inst:
        holds: list[int] = []
        hold = inst.intake.hold

        def counted(entries: Iterable[Entry], source: str | None = None) -> None:
            holds.append(1)
            hold(entries, source)

        monkeypatch.setattr(inst.intake, "hold", counted)
        first = await inst.receive(TREE, raws[:50])
        assert len(first.stored) == 50 and holds == []
        late = await inst.receive(TREE, raws[80:])  # parents 50..79 not here yet
        assert late.stored == [] and late.held == len(raws) - 80 and holds == [1]
        rest = await inst.receive(TREE, raws[50:80])
        assert len(rest.stored) == len(raws) - 50 and rest.held == 0


async def test_batches_from_many_peers_share_one_thread_per_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four batches at once start no more checking threads at a time than the node's
    limiter has tokens (one per core)."""
    running, most, lock = [0], [0], threading.Lock()

    def slow_read(*args: object, **kwargs: object) -> tuple[Read, Checked]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # holds its thread, so that checks overlap if they may
        with lock:
            running[0] -= 1
        return Read([], []), []

    monkeypatch.setattr(offload, "read_slice", slow_read)
    raws = [entry.raw for entry in ENTRIES]
    async with eidetica.open_instance(None) as inst:
        assert inst._checkers.total_tokens == offload.WORKERS
        inst._checkers.total_tokens = 2  # as on a two-core machine, whatever this one has
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(inst.receive, TREE, raws)
    assert most[0] == 2


def test_a_page_of_one_author_s_run_costs_its_heads_checks_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slicing a page among threads never cuts a run's vouching: the threads check their
    slices' heads, and the whole page decides what those authenticate."""
    page = build_entries(1025)[1:]  # without the root, whose author's run it starts
    checked: list[str] = []
    lock = threading.Lock()
    real = check_signature

    def counted(entry: Entry) -> None:
        with lock:
            checked.append(entry.id)
        real(entry)

    monkeypatch.setattr(intake_module, "check_signature", counted)
    monkeypatch.setattr(offload, "WORKERS", 3)
    valid, rejected = trio.run(offload.check_entries, page[0].tree_id, [e.raw for e in page])
    assert len(valid) == len(page) and not rejected
    # The page's tips are its one author's heads; each cut between slices may add the
    # slice's own last entries (two at a fork), and no entry is checked twice.
    assert set(expected_tips(page)) <= set(checked) and len(set(checked)) == len(checked)
    assert len(checked) <= len(expected_tips(page)) + 2 * (3 - 1)


def test_a_badly_signed_entry_and_its_vouching_child_in_other_slices() -> None:
    key = SigningKey.generate()
    root = root_entry(key)
    run = [child_entry(key, root, [root], "k", 0)]
    for value in range(1, 90):
        run.append(child_entry(key, root, [run[-1]], "k", value))
    signature = bytearray(run[0].signature)
    signature[0] ^= 1
    bad = msgspec.structs.replace(run[0], signature=bytes(signature))
    child = child_entry(key, root, [bad], "k", 100)
    raws = [bad.raw, *[e.raw for e in run[1:]], child.raw]  # first and last slices
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offload, "WORKERS", 3)
        valid, rejected = trio.run(offload.check_entries, root.id, raws)
    assert {e.id for e in valid} >= {bad.id, child.id} and len(rejected) == 0
