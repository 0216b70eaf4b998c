"""eidetica.aio: the trio API awaited from asyncio, the node running in a trio thread of
its own. Each test is a plain function that runs its asyncio code in ``asyncio.run``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import eidetica
import eidetica.events as news
from eidetica import aio
from eidetica.errors import InstanceClosed, StorageError, TreeNotFound
from eidetica.node_thread import Face
from tests.api_surface import async_surface, parameters

SECONDS = 30.0
"""Bound on every wait: a failing test fails, it does not hang."""

MIRRORS = [
    (eidetica.Instance, aio.Instance),
    (eidetica.Tree, aio.Tree),
    (eidetica.Sync, aio.Sync),
]


def _node_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("eidetica node")]


@pytest.mark.parametrize(("trio_class", "mirror"), MIRRORS, ids=lambda c: c.__name__)
def test_every_async_method_has_an_asyncio_namesake(trio_class: type, mirror: type) -> None:
    mirrored = async_surface(mirror)
    for name, kind in async_surface(trio_class).items():
        if f"{trio_class.__name__}.{name}" in aio.NOT_MIRRORED:
            continue
        assert mirrored.get(name) == kind, f"aio.{mirror.__name__}.{name} is no async {kind}"
        assert parameters(getattr(mirror, name)) == parameters(getattr(trio_class, name)), name


def test_the_exclusions_name_real_async_methods() -> None:
    surfaces = {cls.__name__: async_surface(cls) for cls, _ in MIRRORS}
    for qualified in aio.NOT_MIRRORED:
        cls, name = qualified.split(".")
        assert name in surfaces[cls], f"stale exclusion {qualified}"


def test_create_write_read_and_errors_of_their_own_type(tmp_path: Path) -> None:
    async def main() -> aio.Tree:
        async with aio.open_instance(tmp_path / "node") as inst:
            tree = await inst.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("milk", {"done": False})
                assert op.doc("todo").get("milk") == {"done": False}
            assert op.entry is not None and await tree.tips() == [op.entry.id]
            assert (await tree.doc("todo")).get("milk") == {"done": False}
            assert (await tree.settings())["name"] == "notes"
            assert await inst.open_tree(tree.root_id) == tree
            with pytest.raises(TreeNotFound):
                await inst.open_tree("0" * 64)
            with pytest.raises(ValueError, match="changed my mind"):
                async with tree.transaction() as op:
                    op.doc("todo").set("eggs", True)
                    raise ValueError("changed my mind")
            assert "eggs" not in await tree.doc("todo")
            async with tree.transaction() as op:  # committed by hand, inside the block
                op.doc("todo").set("bread", 2)
                assert await op.commit() is not None
            assert len(await tree.entries()) == 3
            return tree

    tree = asyncio.run(main())
    assert _node_threads() == []
    with pytest.raises(InstanceClosed):
        asyncio.run(tree.tips())


def test_many_tasks_commit_to_one_tree_at_once() -> None:
    commits = 10

    async def main() -> None:
        async with aio.open_instance(None) as inst:
            tree = await inst.create_tree(name="shared")

            async def writer(who: str) -> None:
                for number in range(commits):
                    async with tree.transaction() as op:
                        op.doc(who).set(str(number), number)

            async with asyncio.timeout(SECONDS):
                await asyncio.gather(*(writer(f"w{n}") for n in range(4)))
            for n in range(4):
                assert len((await tree.doc(f"w{n}")).to_dict()) == commits
            assert len(await tree.entries()) == 1 + 4 * commits

    asyncio.run(main())


def test_two_nodes_sync_over_websocket(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            asyncio.timeout(SECONDS),
            aio.open_instance(tmp_path / "a") as a,
            aio.open_instance(tmp_path / "b") as b,
            a.sync() as a_sync,
            b.sync() as b_sync,
        ):
            tree = await a.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("milk", {"done": False})
            address = await a_sync.start_server("ws://127.0.0.1:0")
            await tree.grant(b.public_key, "write")
            async with b_sync.events() as events:
                host = await b_sync.connect(address)
                assert await anext(events) == news.PeerLinked(host, address)
            assert host == a.public_key
            await b_sync.add_tree_sync(host, tree.root_id)
            await b_sync.wait_synced(host, tree.root_id)
            copy = await b.open_tree(tree.root_id)
            assert (await copy.doc("todo")).get("milk") == {"done": False}

            changes = tree.changes()  # made before the write: its push cannot be missed
            async with copy.transaction() as op:  # pushed to a over b's link
                op.doc("todo").set("eggs", True)
            async for change in changes:
                if change.tips == tuple(await copy.tips()):
                    break
            assert (await tree.doc("todo")).to_dict() == {"milk": {"done": False}, "eggs": True}
            assert await b_sync.peers() == [a.public_key]

    asyncio.run(main())
    assert _node_threads() == []


def test_cancelling_a_wait_leaves_the_node_working() -> None:
    async def main() -> None:
        async with asyncio.timeout(SECONDS), aio.open_instance(None) as inst:
            waiting = asyncio.create_task(inst.changed())
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            version = inst.version
            woken = asyncio.create_task(inst.changed(version))
            await inst.create_tree(name="after")
            assert await woken > version

    asyncio.run(main())


def test_an_instance_that_cannot_open_raises_its_error_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a directory")

    async def main() -> None:
        async with aio.open_instance(tmp_path / "file"):
            pass

    with pytest.raises(StorageError):
        asyncio.run(main())
    assert _node_threads() == []


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


class _AioCounter(Face):
    count = aio._async_iterator(_Counter.count)


def test_async_iterators_stay_async_iterators() -> None:
    counter = _Counter()

    async def main() -> None:
        async with aio.open_instance(None) as inst:
            face = _AioCounter(inst._node, counter)
            assert [number async for number in face.count(3)] == [0, 1, 2]
            async with face.count(100) as numbers:
                assert await anext(numbers) == 0
            assert counter.closed == 2

    asyncio.run(main())
