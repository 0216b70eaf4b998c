"""The trio API awaited outside trio fails at once, before it writes anything, with a
typed error that names the modules to use instead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import eidetica
from eidetica.errors import NotInTrio
from eidetica.storage.crdt import SetOp
from tests.api_surface import async_surface, named_parameters

NOT_GUARDED = {
    "Instance.lock_for": "returns the node's trio.Lock; it stores nothing",
}
"""Async-looking parts of the surface without the guard, with the reason."""


def _under_asyncio(method: Callable[..., Any], target: object, arguments: dict[str, Any]) -> None:
    """Await (or enter) ``method`` on ``target`` in ``asyncio.run``."""

    async def attempt() -> None:
        result = method(target, **arguments)
        if hasattr(result, "__aenter__"):
            async with result:
                pass
        else:
            await result

    asyncio.run(attempt())


def test_opening_an_instance_under_asyncio_fails_at_once_and_creates_nothing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with eidetica.open_instance(tmp_path / "node"):
            pass

    with pytest.raises(NotInTrio, match=r"eidetica\.aio.*eidetica\.blocking"):
        asyncio.run(main())
    assert not (tmp_path / "node").exists()


async def test_every_async_method_fails_under_asyncio_before_it_writes(tmp_path: Path) -> None:
    async with eidetica.open_instance(tmp_path / "node") as inst, inst.sync() as sync:
        tree = await inst.create_tree(name="notes")
        samples: dict[str, Any] = {
            "name": "written-under-asyncio",
            "settings": None,
            "root_id": tree.root_id,
            "items": [],
            "tree": tree.root_id,
            "raws": [],
            "ids": None,
            "source": None,
            "staged": {"todo": (SetOp(("milk",), True),)},
            "since": None,
            "entry_id": (await tree.tips())[0],
            "key": "*",
            "permission": "write",
            "address": "sim://nowhere",
            "peer": inst.public_key,
            "tree_id": tree.root_id,
            "entry_ids": [],
            "retry": 1.0,
        }
        overrides = {("Instance.commit", "tree"): tree}
        targets = {eidetica.Instance: inst, eidetica.Tree: tree, eidetica.Sync: sync}
        tried = []
        tips_before = {t.root_id: await t.tips() for t in await inst.trees()}
        for cls, target in targets.items():
            for name, kind in async_surface(cls).items():
                qualified = f"{cls.__name__}.{name}"
                if qualified in NOT_GUARDED or kind == "iterator":  # iterators only read
                    continue
                method = getattr(cls, name)
                unknown = set(named_parameters(method)) - set(samples)
                assert not unknown, f"add a sample argument for {qualified}: {unknown}"
                arguments = {
                    param: overrides.get((qualified, param), samples[param])
                    for param in named_parameters(method)
                }
                with pytest.raises(NotInTrio, match=r"eidetica\.aio"):
                    await trio.to_thread.run_sync(_under_asyncio, method, target, arguments)
                tried.append(qualified)
        assert {"Instance.create_tree", "Tree.transaction", "Instance.sync"} <= set(tried)
        assert {t.root_id: await t.tips() for t in await inst.trees()} == tips_before
        assert await sync.peers() == []
    async with eidetica.open_instance(tmp_path / "node") as reopened:  # what the file holds
        names = [(await t.settings())["name"] for t in await reopened.trees()]
        notes = await reopened.open_tree(tree.root_id)
        assert "written-under-asyncio" not in names
        assert len(await notes.entries()) == 1
        assert (await notes.settings())["auth"] == {inst.public_key: "admin"}
