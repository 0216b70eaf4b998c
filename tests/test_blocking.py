"""eidetica.blocking: the trio API as plain calls from any thread, the node running in
a trio thread of its own."""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
import trio

import eidetica
import eidetica.events as news
from eidetica import blocking
from eidetica.errors import (
    InstanceClosed,
    InvalidPermission,
    NotInTrio,
    StorageError,
    TreeNotFound,
)
from eidetica.node_thread import Face
from tests.api_surface import async_surface, parameters

T = TypeVar("T")

SECONDS = 30.0
"""Bound on every wait: a failing test fails, it does not hang."""

MIRRORS = [
    (eidetica.Instance, blocking.Instance),
    (eidetica.Tree, blocking.Tree),
    (eidetica.Sync, blocking.Sync),
    (eidetica.AtomicOp, blocking.AtomicOp),
]


def _bounded(function: Callable[[], T]) -> T:
    """``function()`` in a worker thread, failing the test if it takes over SECONDS
    (leaving the instance's block then stops the node, which ends the wait)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(function).result(timeout=SECONDS)
    finally:
        pool.shutdown(wait=False)  # a wait that timed out must not hold the test here


def _node_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("eidetica node")]


@pytest.mark.parametrize(("trio_class", "mirror"), MIRRORS, ids=lambda c: c.__name__)
def test_every_async_method_has_a_blocking_namesake(trio_class: type, mirror: type) -> None:
    for name, kind in async_surface(trio_class).items():
        if f"{trio_class.__name__}.{name}" in blocking.NOT_MIRRORED:
            continue
        counterpart = getattr(mirror, name, None)
        assert counterpart is not None, f"blocking.{mirror.__name__} lacks {name} ({kind})"
        assert not inspect.iscoroutinefunction(counterpart), name
        assert not inspect.isasyncgenfunction(counterpart), name
        assert parameters(counterpart) == parameters(getattr(trio_class, name)), name


def test_the_exclusions_name_real_async_methods() -> None:
    surfaces = {cls.__name__: async_surface(cls) for cls, _ in MIRRORS}
    for qualified in blocking.NOT_MIRRORED:
        cls, name = qualified.split(".")
        assert name in surfaces[cls], f"stale exclusion {qualified}"


def test_create_write_read_and_errors_of_their_own_type(tmp_path: Path) -> None:
    with blocking.open_instance(tmp_path / "node") as inst:
        tree = inst.create_tree(name="notes")
        with tree.transaction() as op:
            op.doc("todo").set("milk", {"done": False})
            assert op.doc("todo").get("milk") == {"done": False}  # staged, read back
        assert op.entry is not None and tree.tips() == [op.entry.id]
        assert tree.doc("todo").get("milk") == {"done": False}
        assert tree.settings()["name"] == "notes"
        assert inst.open_tree(tree.root_id) == tree
        assert [t.root_id for t in inst.trees()] == [tree.root_id]
        with pytest.raises(TreeNotFound):
            inst.open_tree("0" * 64)
        with pytest.raises(InvalidPermission):
            tree.grant("*", "owner")
        with pytest.raises(ValueError, match="changed my mind"), tree.transaction() as op:
            op.doc("todo").set("eggs", True)
            raise ValueError("changed my mind")
        assert "eggs" not in tree.doc("todo") and len(tree.entries()) == 2
        assert _node_threads() == ["eidetica node " + str(tmp_path / "node")]
    assert _node_threads() == []
    with pytest.raises(InstanceClosed):
        tree.tips()
    with blocking.open_instance(tmp_path / "node") as again:  # it was stored
        assert again.open_tree(tree.root_id).doc("todo").to_dict() == {"milk": {"done": False}}


def test_an_instance_that_cannot_open_raises_its_error_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError), blocking.open_instance(tmp_path / "file"):
        pass
    assert _node_threads() == []


def test_two_threads_commit_to_one_tree_at_once(tmp_path: Path) -> None:
    commits = 20
    with blocking.open_instance(tmp_path / "node") as inst:
        tree = inst.create_tree(name="shared")
        start = threading.Barrier(2, timeout=SECONDS)

        def writer(who: str) -> None:
            start.wait()
            for number in range(commits):
                with tree.transaction() as op:
                    counts = op.doc("counts")
                    counts.set(who, counts.get(who, 0) + 1)
                    op.doc(who).set(str(number), number)

        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(writer, who) for who in ("left", "right")]
            for future in done:
                future.result(timeout=SECONDS)
        assert tree.doc("counts").to_dict() == {"left": commits, "right": commits}
        assert len(tree.doc("left").to_dict()) == len(tree.doc("right").to_dict()) == commits
        assert len(tree.entries()) == 1 + 2 * commits
        assert len(tree.tips()) == 1  # each commit built on the one before


def test_two_nodes_sync_over_websocket(tmp_path: Path) -> None:
    with (
        blocking.open_instance(tmp_path / "a") as a,
        blocking.open_instance(tmp_path / "b") as b,
        a.sync() as a_sync,
        b.sync() as b_sync,
    ):
        tree = a.create_tree(name="notes")
        with tree.transaction() as op:
            op.doc("todo").set("milk", {"done": False})
        address = a_sync.start_server("ws://127.0.0.1:0")
        tree.grant(b.public_key, "write")
        with b_sync.events() as events:
            host = b_sync.connect(address)
            assert next(events) == news.PeerLinked(host, address)
        assert host == a.public_key
        b_sync.add_tree_sync(host, tree.root_id)
        b_sync.wait_synced(host, tree.root_id)
        copy = b.open_tree(tree.root_id)
        assert copy.tips() == tree.tips()
        assert copy.doc("todo").get("milk") == {"done": False}
        assert b_sync.peers() == [a.public_key]

        with copy.transaction() as op:  # pushed to a over b's link, no round asked for
            op.doc("todo").set("eggs", True)

        def a_has_it() -> None:
            with tree.changes() as changes:  # made before the check: no change missed
                if tree.tips() == copy.tips():
                    return
                for change in changes:
                    if change.tips == tuple(copy.tips()):
                        return

        _bounded(a_has_it)
        assert tree.doc("todo").to_dict() == {"milk": {"done": False}, "eggs": True}
        status = b_sync.status()
        assert a.public_key in status.peers
    assert _node_threads() == []


def test_an_error_in_a_sync_block_goes_on_as_itself() -> None:
    with blocking.open_instance(None) as inst:
        with pytest.raises(KeyError, match="mine"), inst.sync() as sync:
            sync.start_server("ws://127.0.0.1:0")
            raise KeyError("mine")
        with inst.sync() as sync:  # the engine closed: a new one opens
            assert sync.peers() == []


def test_the_trio_objects_refuse_plain_threads() -> None:
    with blocking.open_instance(None) as inst:
        trio_instance = inst._target
        with pytest.raises(NotInTrio, match=r"eidetica\.blocking"):  # stepped by hand here
            coroutine = trio_instance.create_tree("x")
            try:
                coroutine.send(None)
            finally:
                coroutine.close()
        assert inst.trees() == []


class _Counter:
    """A trio object with an async iterator, as ``Sync.events`` will be."""

    def __init__(self) -> None:
        self.closed = 0

    async def count(self, up_to: int) -> AsyncIterator[int]:
        try:
            for number in range(up_to):
                await trio.lowlevel.checkpoint()
                yield number
        finally:
            self.closed += 1


class _BlockingCounter(Face):
    count = blocking._iterator(_Counter.count)


def test_async_iterators_become_plain_iterators() -> None:
    counter = _Counter()
    with blocking.open_instance(None) as inst:
        face = _BlockingCounter(inst._node, counter)
        assert list(face.count(3)) == [0, 1, 2]
        with face.count(100) as numbers:
            assert next(numbers) == 0
            assert next(numbers) == 1
        assert counter.closed == 2  # ran out, then closed on leaving the block
