"""A node authenticates received entries through their hash chains, and what it
stores does not depend on how the entries were cut into batches."""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.errors import BadSignature, PermissionDenied, StorageError
from eidetica.protocol.entry import SETTINGS_STORE, Entry, StoreWrite, create_entry
from eidetica.protocol.hashchain import named
from eidetica.protocol.keys import SigningKey
from eidetica.storage import writer
from eidetica.storage.backend import Record
from eidetica.storage.crdt import SetOp, encode_ops
from eidetica.storage.sqlite import SqliteBackend
from tests.builders import child_entry

OWNER = SigningKey(bytes(range(32)))
WRITER = SigningKey(bytes(range(1, 33)))
KEYS = [OWNER, WRITER]


def root_granting_writer(entropy: bytes = bytes(16)) -> Entry:
    """A root owned by OWNER that lets WRITER write."""
    auth = {OWNER.public_key: "admin", WRITER.public_key: "write"}
    return create_entry(
        OWNER,
        tree=None,
        parents=(),
        height=0,
        stores=[StoreWrite(SETTINGS_STORE, (), encode_ops([SetOp(("auth",), auth)]))],
        entropy=entropy,
    )


ROOT = root_granting_writer()
TREE = ROOT.id


def badly_signed(entry: Entry) -> Entry:
    """``entry`` with one bit of its signature flipped: other bytes, another id."""
    signature = bytearray(entry.signature)
    signature[0] ^= 1
    return msgspec.structs.replace(entry, signature=bytes(signature))


BAD = badly_signed(child_entry(WRITER, ROOT, [ROOT], "a", 1))
"""The writer's entry with a bad signature, which its child below names."""
CHILD = child_entry(WRITER, ROOT, [BAD], "b", 2)


async def stored_after(batches: Sequence[Sequence[Entry]]) -> set[str]:
    async with eidetica.open_instance(None) as inst:
        for batch in batches:
            await inst.receive(TREE, [e.raw for e in batch])
        return inst.backend.has([ROOT.id, BAD.id, CHILD.id])


@pytest.mark.parametrize(
    "batches",
    [
        [[ROOT, BAD, CHILD]],  # with its child
        [[ROOT, BAD], [BAD, CHILD]],  # alone, then again with its child
        [[ROOT, BAD], [CHILD], [BAD]],  # alone, its child (held), alone again
        [[ROOT, CHILD], [BAD]],  # its child first (held), then alone
    ],
    ids=["together", "alone-then-with-child", "alone-child-alone", "child-first"],
)
async def test_a_badly_signed_entry_with_a_good_child_is_stored_however_cut(
    batches: Sequence[Sequence[Entry]],
) -> None:
    assert await stored_after(batches) == {ROOT.id, BAD.id, CHILD.id}


async def test_a_badly_signed_entry_alone_is_refused() -> None:
    async with eidetica.open_instance(None) as inst:
        receipt = await inst.receive(TREE, [ROOT.raw, BAD.raw])
        assert receipt.stored == [ROOT.id]
        assert [type(r.error) for r in receipt.rejected] == [BadSignature]


async def test_a_logged_refusal_does_not_stop_a_later_vouched_arrival(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal is remembered for logging only: the same bytes, sent again with the
    child that vouches for them, are stored."""
    async with eidetica.open_instance(None) as inst:
        with caplog.at_level(logging.WARNING, logger="eidetica.storage.instance"):
            await inst.receive(TREE, [ROOT.raw, BAD.raw])
            await inst.receive(TREE, [BAD.raw])
        assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        receipt = await inst.receive(TREE, [BAD.raw, CHILD.raw])
        assert receipt.stored == [BAD.id, CHILD.id] and receipt.rejected == []


async def test_a_stored_entry_sent_again_is_not_refused_for_its_signature() -> None:
    async with eidetica.open_instance(None) as inst:
        await inst.receive(TREE, [ROOT.raw, BAD.raw, CHILD.raw])
        receipt = await inst.receive(TREE, [BAD.raw])
        assert receipt.rejected == [] and receipt.stored == []


async def test_import_takes_a_badly_signed_entry_with_its_child_and_not_alone() -> None:
    async with eidetica.open_instance(None) as inst:
        with pytest.raises(BadSignature):
            await inst.import_entries([ROOT, BAD])
        assert await inst.import_entries([ROOT, BAD, CHILD]) == [ROOT.id, BAD.id, CHILD.id]


async def test_a_run_whose_author_was_revoked_part_way_keeps_what_came_before() -> None:
    """Authentic is not allowed: every entry's permission is still checked, so the
    writer's entries after the owner lowered it are refused, those before kept."""
    before = [child_entry(WRITER, ROOT, [ROOT], "k", 0)]
    for value in range(1, 4):
        before.append(child_entry(WRITER, ROOT, [before[-1]], "k", value))
    revocation = create_entry(
        OWNER,
        tree=TREE,
        parents=[before[-1].id],
        height=before[-1].height + 1,
        stores=[
            StoreWrite(
                SETTINGS_STORE, (ROOT.id,), encode_ops([SetOp(("auth", WRITER.public_key), "read")])
            )
        ],
    )
    after = [child_entry(WRITER, ROOT, [revocation], "k", 10)]
    for value in range(11, 14):
        after.append(child_entry(WRITER, ROOT, [after[-1]], "k", value))
    async with eidetica.open_instance(None) as inst:
        receipt = await inst.receive(TREE, [e.raw for e in [ROOT, *before, revocation, *after]])
        assert receipt.stored == [e.id for e in [ROOT, *before, revocation]]
        refused = {r.id: type(r.error) for r in receipt.rejected}
        assert refused[after[0].id] is PermissionDenied
        assert set(refused) == {e.id for e in after}


def _build(shape: Sequence[tuple[Sequence[int], int, bool]], root_bad: bool) -> list[Entry]:
    """A root and one entry per item of ``shape``: its parents (indexes into the result),
    its author (an index into KEYS), and whether its signature is spoiled; children
    name the spoiled bytes."""
    root = root_granting_writer(bytes(range(16)))
    entries = [badly_signed(root) if root_bad else root]
    for index, (parents, author, bad) in enumerate(shape, start=1):
        entry = child_entry(
            KEYS[author], entries[0], [entries[i] for i in sorted(set(parents))], "k", index
        )
        entries.append(badly_signed(entry) if bad else entry)
    return entries


def _expected(entries: Sequence[Entry]) -> tuple[set[str], set[str]]:
    """What the rule stores (every ancestor and the entry itself authentic, and an
    entry whose own signature fails named by a same-author entry stored too), and
    what checking every signature would store (every one verifies), worked out from
    the whole set with no batches."""
    by_id = {e.id: e for e in entries}
    good = {e.id for e in entries if not _fails(e)}
    authentic = set(good)
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.id not in authentic:
                continue
            for other in set(named(entry)) - authentic:
                if other in by_id and by_id[other].author == entry.author:
                    authentic.add(other)
                    changed = True

    def closed(allowed: set[str]) -> set[str]:
        kept: set[str] = set()
        for entry in sorted(entries, key=lambda e: e.height):
            if entry.id in allowed and all(p in kept for p in entry.parents):
                kept.add(entry.id)
        return kept

    # An entry whose own signature fails is stored only with a stored same-author
    # entry that names it: drop those whose vouchers are not kept, until none is.
    kept = closed(authentic)
    while True:
        vouched = {
            other
            for entry in entries
            if entry.id in kept
            for other in named(entry)
            if other in by_id and by_id[other].author == entry.author
        }
        narrowed = closed({i for i in kept if i in good or i in vouched})
        if narrowed == kept:
            return kept, closed(good)
        kept = narrowed


def _fails(entry: Entry) -> bool:
    try:
        eidetica.protocol.entry.check_signature(entry)
    except BadSignature:
        return True
    return False


shapes = st.integers(1, 10).flatmap(
    lambda count: st.tuples(
        *[
            st.tuples(
                st.lists(st.integers(0, index - 1), min_size=1, max_size=2, unique=True),
                st.integers(0, 1),
                st.booleans(),
            )
            for index in range(1, count + 1)
        ]
    )
)


@settings(max_examples=60, deadline=None)
@given(shapes, st.booleans(), st.randoms(use_true_random=False), st.data())
def test_what_is_stored_does_not_depend_on_the_cut(
    shape: Sequence[tuple[Sequence[int], int, bool]],
    root_bad: bool,
    rng: random.Random,
    data: st.DataObject,
) -> None:
    """For any entries of two writers, some badly signed, sent in any order and cut into
    any batches, each batch sent again until nothing more is stored (as a sync asks
    again for what a held entry lacks), a node stores exactly the entries that are
    authentic with every ancestor: what one batch of all of them stores. That is what
    checking every signature stores, plus entries whose own or an ancestor's signature
    fails but which an entry by the same key, whose signature verifies, names through
    a chain of that key's entries."""
    entries = _build(shape, root_bad)
    order = list(entries)
    rng.shuffle(order)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=4)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    expected, every_signature = _expected(entries)

    async def deliver(batches: Sequence[Sequence[Entry]]) -> set[str]:
        async with eidetica.open_instance(None) as inst:
            state: tuple[set[str], int] | None = None
            while True:  # until a round changes nothing stored or held
                for batch in batches:
                    await inst.receive(batch[0].tree_id, [e.raw for e in batch])
                now = (inst.backend.has(e.id for e in entries), inst.intake.held_entries)
                if now == state:
                    return now[0]
                state = now

    cut = trio.run(deliver, batches)
    whole = trio.run(deliver, [entries])
    assert cut == whole == expected
    assert every_signature <= expected
    for entry in entries:
        if entry.id in expected and _fails(entry):
            assert _vouched_by_a_good_signature(entries, entry)


def _vouched_by_a_good_signature(entries: Sequence[Entry], entry: Entry) -> bool:
    """Whether an entry by ``entry``'s author whose signature verifies names it through
    a chain of that author's entries."""
    same = [e for e in entries if e.author == entry.author]
    reached, frontier = {entry.id}, [entry.id]
    while frontier:
        current = frontier.pop()
        for other in same:
            if current in set(named(other)) and other.id not in reached:
                if not _fails(other):
                    return True
                reached.add(other.id)
                frontier.append(other.id)
    return False


# The writer's child of BAD with a wrong height: its signature verifies, but the tree
# refuses it, so it vouches for nothing stored.
REFUSED_CHILD = create_entry(
    WRITER,
    tree=TREE,
    parents=[BAD.id],
    height=7,
    stores=[StoreWrite("d", (BAD.id,), encode_ops([SetOp(("b",), 2)]))],
)


async def test_a_voucher_the_tree_refuses_vouches_for_nothing() -> None:
    async with eidetica.open_instance(None) as inst:
        await inst.receive(TREE, [e.raw for e in (ROOT, BAD, REFUSED_CHILD)])
        assert inst.backend.has([BAD.id, REFUSED_CHILD.id]) == set()


async def test_a_voucher_still_held_vouches_for_nothing_stored() -> None:
    # ``waiting`` names BAD and a parent that has not come: it waits, and so does
    # BAD, which only ``waiting`` vouches for; once the other parent comes, all are
    # stored together.
    other = child_entry(OWNER, ROOT, [ROOT], "o", 1)
    waiting = child_entry(WRITER, ROOT, [BAD, other], "w", 2)
    async with eidetica.open_instance(None) as inst:
        await inst.receive(TREE, [ROOT.raw, waiting.raw])
        await inst.receive(TREE, [BAD.raw])
        assert inst.backend.has([BAD.id]) == set()
        await inst.receive(TREE, [other.raw])
        assert inst.backend.has([BAD.id, other.id, waiting.id]) == {BAD.id, other.id, waiting.id}


async def test_a_write_cut_between_chunks_keeps_no_entry_without_its_voucher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of the writer's, every entry badly signed but the last, whose good
    signature vouches for them all (only the key's holder can make one). The page is
    written in a thread in chunks; if a later chunk fails (a full disk, a crash, the
    node closing), what the earlier ones stored must be authentic as stored: entries
    with nothing stored that vouches for them are what other nodes refuse."""
    run = [BAD]
    for index in range(writer.CHUNK + 40):
        child = child_entry(WRITER, ROOT, [run[-1]], f"k{index}", index)
        run.append(child if index == writer.CHUNK + 39 else badly_signed(child))
    insert = SqliteBackend._insert

    def failing_last(self: SqliteBackend, batch: object, record: Record) -> None:
        if record.entry.id == run[-1].id:
            raise sqlite3.OperationalError("disk full")
        insert(self, batch, record)  # type: ignore[arg-type]

    async with eidetica.open_instance(tmp_path / "node") as inst:
        await inst.receive(TREE, [ROOT.raw])
        monkeypatch.setattr(SqliteBackend, "_insert", failing_last)
        with pytest.raises(StorageError):
            await inst.receive(TREE, [e.raw for e in run])
        monkeypatch.undo()
        assert inst.backend.has(e.id for e in run) == set()
        stored = await inst.receive(TREE, [e.raw for e in run])
        assert stored.stored == [e.id for e in run]
