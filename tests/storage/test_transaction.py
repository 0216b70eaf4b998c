"""AtomicOp: one signed entry per clean exit, nothing at all on error."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.errors import (
    InvalidPath,
    InvalidStoreName,
    InvalidValue,
    TransactionClosed,
    TreeNotFound,
)
from eidetica.protocol import limits
from eidetica.protocol.entry import StoreWrite, create_entry
from eidetica.storage.crdt import SetOp, encode_ops


async def test_clean_exit_commits_exactly_one_entry_on_the_tips(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    before = await tree.tips()
    async with tree.transaction() as op:
        op.doc("a").set("x", 1)
        op.doc("b").set("y", 2)
    assert op.entry is not None
    assert await tree.tips() == [op.entry.id]
    assert op.entry.parents == tuple(before)
    assert [w.name for w in op.entry.stores] == ["a", "b"]
    assert len(await tree.entries()) == 2
    assert op.entry.author == inst.public_key


async def test_store_parents_are_the_store_tips(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as first:
        first.doc("a").set("x", 1)
    async with tree.transaction() as other:
        other.doc("b").set("x", 1)
    async with tree.transaction() as second:
        second.doc("a").set("x", 2)
    assert first.entry and other.entry and second.entry
    assert first.entry.stores[0].parents == ()
    assert second.entry.parents == (other.entry.id,)
    assert second.entry.stores[0].parents == (first.entry.id,)


async def test_error_discards_everything(instance_path: Path | None) -> None:
    async with eidetica.open_instance(instance_path) as inst:
        tree = await inst.create_tree(name="t")
        async with tree.transaction() as op:
            op.doc("d").set("kept", 1)
        tips = await tree.tips()
        with pytest.raises(RuntimeError):
            async with tree.transaction() as aborted:
                aborted.doc("d").set("lost", 2)
                aborted.doc("d").delete("kept")
                raise RuntimeError("abort")
        assert aborted.entry is None
        with pytest.raises(TransactionClosed):
            aborted.doc("d").set("late", 3)
        assert await tree.tips() == tips
        assert (await tree.doc("d")).to_dict() == {"kept": 1}
    if instance_path is not None:  # and nothing of it reached the disk either
        async with eidetica.open_instance(instance_path) as inst:
            reopened = await inst.open_tree(tree.root_id)
            assert await reopened.tips() == tips
            assert len(await reopened.entries()) == 2


async def test_transaction_without_writes_commits_nothing(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    tips = await tree.tips()
    async with tree.transaction() as op:
        assert op.doc("d").get("x") is None
    assert op.entry is None
    assert await tree.tips() == tips


async def test_transaction_reads_its_own_writes(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        op.doc("d").set("a.b", 1)
    async with tree.transaction() as op:
        doc = op.doc("d")
        doc.set("a.c", 2)
        assert doc.get("a") == {"b": 1, "c": 2}
        doc.delete("a.b")
        assert doc.get("a") == {"c": 2}
        assert "a.c" in doc and "a.b" not in doc
        assert (await tree.doc("d")).get("a") == {"b": 1}  # not visible outside yet
    assert (await tree.doc("d")).get("a") == {"c": 2}


async def test_used_after_commit_is_typed_error(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        doc = op.doc("d")
        doc.set("x", 1)
    with pytest.raises(TransactionClosed):
        doc.set("x", 2)
    with pytest.raises(TransactionClosed):
        op.doc("d")
    with pytest.raises(TransactionClosed):
        await op.commit()


async def test_snapshot_does_not_change_under_later_commits(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        op.doc("d").set("x", {"n": 1})
    snapshot = await tree.doc("d")
    async with tree.transaction() as op:
        op.doc("d").set("x.n", 2)
    assert (await tree.doc("d")).get("x") == {"n": 2}  # the fold has moved on...
    assert snapshot.get("x") == {"n": 1}  # ...and the snapshot has not
    with pytest.raises(TransactionClosed):
        snapshot.set("x", 3)


async def test_values_returned_are_copies(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    value = {"list": [1, 2]}
    async with tree.transaction() as op:
        op.doc("d").set("x", value)
    value["list"].append(3)  # the caller's object is not shared with the store
    read = (await tree.doc("d")).get("x")
    read["list"].append(4)
    assert (await tree.doc("d")).get("x") == {"list": [1, 2]}


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), {1: "int key"}, object(), 2**64, b"bytes"]
)
async def test_unstorable_values_are_typed_errors(inst: eidetica.Instance, value: object) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        with pytest.raises(InvalidValue):
            op.doc("d").set("x", value)
    assert op.entry is None


async def test_bad_paths_and_store_names_are_typed_errors(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        for path in ["", "a..b", ".a", ()]:
            with pytest.raises(InvalidPath):
                op.doc("d").set(path, 1)
        for name in ["_settings", "", "a/b"]:
            with pytest.raises(InvalidStoreName):
                op.doc(name)
    with pytest.raises(InvalidStoreName):
        await tree.doc("_settings")


async def test_cancelled_transaction_stores_nothing(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    tips = await tree.tips()
    with trio.CancelScope() as scope:
        async with tree.transaction() as op:
            op.doc("d").set("x", 1)
            scope.cancel()
            await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert op.entry is None
    assert await tree.tips() == tips


async def test_commit_cancelled_while_waiting_for_the_lock_stores_nothing(
    inst: eidetica.Instance, autojump_clock: trio.testing.MockClock
) -> None:
    tree = await inst.create_tree(name="t")
    tips = await tree.tips()
    release = trio.Event()

    async def hold_the_tree(task_status: trio.TaskStatus[None]) -> None:
        async with inst.lock_for(tree.root_id):  # as a slow commit would
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_the_tree)
        with trio.move_on_after(5) as scope:
            async with tree.transaction() as op:
                op.doc("d").set("x", 1)
        release.set()
    assert scope.cancelled_caught
    assert op.entry is None
    assert await tree.tips() == tips
    with pytest.raises(TransactionClosed):
        op.doc("d").set("x", 2)


async def test_committing_or_discarding_inside_the_block_is_allowed(
    inst: eidetica.Instance,
) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        op.doc("d").set("x", 1)
        entry = await op.commit()
    assert entry is not None and await tree.tips() == [entry.id]
    async with tree.transaction() as op:
        op.doc("d").set("x", 2)
        op.discard()
    assert (await tree.doc("d")).get("x") == 1


async def test_commit_on_an_unknown_tree_is_typed_error(inst: eidetica.Instance) -> None:
    with pytest.raises(TreeNotFound):
        async with eidetica.Tree(inst, "0" * 64).transaction() as op:
            op.doc("d").set("x", 1)


async def test_more_tips_than_an_entry_can_name_still_commit(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="wide")
    (root,) = await tree.entries()
    siblings = [
        create_entry(
            inst.device_key,
            tree=root.id,
            parents=[root.id],
            height=1,
            stores=[StoreWrite("d", (), encode_ops([SetOp((f"k{i}",), i)]))],
        )
        for i in range(limits.MAX_PARENTS + 20)
    ]
    await inst.import_entries(siblings)
    for _ in range(2):
        async with tree.transaction() as op:
            op.doc("d").set("merged", True)
    assert op.entry is not None
    assert len(await tree.tips()) == 1  # the second commit merged what the first could not
    assert (await tree.doc("d")).get("k0") == 0


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic garbage collector off: only reference counts free objects."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_collector")
async def test_a_transaction_is_freed_without_the_garbage_collector(
    inst: eidetica.Instance,
) -> None:
    # A transaction in a reference cycle waits for the collector, and a writer's every
    # commit would leave one: a collection of the young generation every few dozen.
    tree = await inst.create_tree(name="t")
    freed = []
    for end in ("commit", "discard", "error"):
        with pytest.raises(ValueError) if end == "error" else contextlib.nullcontext():
            async with tree.transaction() as op:
                op.doc("d").set("x", 1)
                op.settings().set("note", end)
                assert op.doc("d").get("x") == 1
                if end == "discard":
                    op.discard()
                elif end == "error":
                    raise ValueError(end)
        freed.append(weakref.ref(op))
        del op
    assert [ref() for ref in freed] == [None, None, None]
