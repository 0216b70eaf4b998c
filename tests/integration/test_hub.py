"""A hub takes in its clients' trees: real nodes, real SQLite files, real servers.

Under ``accept_trees="any"`` a client backs a new tree up to the hub with one sync;
other clients take it from the hub; writes on any client reach the others through the
hub with no sync call. The default policy refuses a pushed tree, a key list admits
only its keys, and quotas bound what one client can bring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import eidetica
from eidetica.actors.engine.policy import AcceptTrees, TreeQuota
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.errors import EideticaError, InvalidValue, RemoteError, TreeNotFound
from tests.nodes import WsNode, ws_node
from tests.waiting import settle, until

QUIET = SyncConfig(periodic_sync=3600, connection_check=3600)
"""No timer fires within a test's bound: whatever arrives was pushed."""


@asynccontextmanager
async def hub(
    path: Path, accept: AcceptTrees, quota: TreeQuota | None = None
) -> AsyncIterator[tuple[WsNode, str, str]]:
    """A hub listening on WebSocket and HTTP; yields it and both addresses."""
    config = SyncConfig(periodic_sync=3600, connection_check=3600, tree_quota=quota or TreeQuota())
    async with ws_node(path, config, accept_trees=accept) as node:
        ws_at = await node.sync.start_server("ws://127.0.0.1:0")
        http_at = await node.sync.start_server("http://127.0.0.1:0")
        yield node, ws_at, http_at


async def new_tree(client: WsNode, name: str = "notes") -> eidetica.Tree:
    """A new tree of the client's, which anyone may write, with one value in it."""
    tree = await client.inst.create_tree(name=name)
    await tree.grant("*", "write")
    async with tree.transaction() as op:
        op.doc("d").set("first", name)
    return tree


async def back_up(client: WsNode, at: str, tree: eidetica.Tree) -> str:
    """Sync ``tree`` to the hub at ``at`` once, as its only tree; the hub's key."""
    hub_key = await client.sync.connect(at)
    await client.sync.add_tree_sync(hub_key, tree.root_id)
    try:
        await client.sync.sync_with_peer(hub_key)
    except EideticaError:
        await client.sync.remove_tree_sync(hub_key, tree.root_id)
        raise
    return hub_key


async def backed_up(client: WsNode, at: str, name: str = "notes") -> tuple[eidetica.Tree, str]:
    """A new tree of the client's, synced to the hub at ``at``; it and the hub's key."""
    tree = await new_tree(client, name)
    return tree, await back_up(client, at, tree)


async def joined(sync: Sync, inst: eidetica.Instance, at: str, tree_id: str) -> eidetica.Tree:
    """Take ``tree_id`` from the hub at ``at``: connect, relate, sync once."""
    hub_key = await sync.connect(at)
    await sync.add_tree_sync(hub_key, tree_id)
    await sync.sync_with_peer(hub_key)
    return await inst.open_tree(tree_id)


async def holds(node: WsNode, tree_id: str) -> bool:
    try:
        await node.inst.open_tree(tree_id)
    except TreeNotFound:
        return False
    return True


async def test_a_hub_takes_in_a_clients_tree_and_relays_writes_between_clients(
    tmp_path: Path,
) -> None:
    """Two clients over WebSocket and one over HTTP: none listens, none calls a sync
    after joining, and every write reaches the other two through the hub."""
    with trio.fail_after(30):  # the periodic sync is an hour away
        async with (
            hub(tmp_path / "hub", "any") as (the_hub, ws_at, http_at),
            ws_node(tmp_path / "c1", QUIET) as one,
            ws_node(tmp_path / "c2", QUIET) as two,
            ws_node(tmp_path / "c3", QUIET) as three,
        ):
            tree, _ = await backed_up(one, ws_at)
            kept = await the_hub.inst.open_tree(tree.root_id)
            assert await kept.tips() == await tree.tips()
            status = await the_hub.sync.status()
            assert tree.root_id in status.peers[one.inst.public_key].trees
            assert status.peers[one.inst.public_key].kept  # related for good

            on_two = await joined(two.sync, two.inst, ws_at, tree.root_id)
            on_three = await joined(three.sync, three.inst, http_at, tree.root_id)
            copies = [tree, on_two, on_three]
            for n, writer in enumerate(copies):
                async with writer.transaction() as op:
                    op.doc("d").set(f"from_{n}", n)
                for other in copies:
                    await settle(writer, other)  # through the hub, with no sync call
            expected = {"first": "notes", "from_0": 0, "from_1": 1, "from_2": 2}
            for copy in copies:
                assert (await copy.doc("d")).to_dict() == expected


async def test_by_default_a_node_refuses_a_tree_it_was_not_told_to_sync(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            hub(tmp_path / "hub", "chosen") as (the_hub, ws_at, _),
            ws_node(tmp_path / "c1", QUIET) as one,
        ):
            tree = await new_tree(one)
            with pytest.raises(RemoteError, match="no tree"):
                await back_up(one, ws_at, tree)
            assert not await holds(the_hub, tree.root_id)


async def test_a_key_list_admits_only_those_keys(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            ws_node(tmp_path / "c1", QUIET) as one,
            ws_node(tmp_path / "c2", QUIET) as two,
            hub(tmp_path / "hub", [one.inst.public_key]) as (the_hub, ws_at, _),
        ):
            mine, _ = await backed_up(one, ws_at, "mine")
            theirs = await new_tree(two, "theirs")
            with pytest.raises(RemoteError, match="no tree"):
                await back_up(two, ws_at, theirs)
            assert await holds(the_hub, mine.root_id)
            assert not await holds(the_hub, theirs.root_id)


async def test_a_callable_policy_decides_each_tree_and_may_be_async(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    async def only_named_ones(peer: str, tree_id: str) -> bool:
        asked.append((peer, tree_id))
        await trio.lowlevel.checkpoint()
        return tree_id == asked[0][1]  # the first tree it was asked about only

    with trio.fail_after(30):
        async with (
            ws_node(tmp_path / "c1", QUIET) as one,
            hub(tmp_path / "hub", only_named_ones) as (the_hub, ws_at, _),
        ):
            first, _ = await backed_up(one, ws_at, "first")
            second = await new_tree(one, "second")
            with pytest.raises(RemoteError):
                await back_up(one, ws_at, second)
            assert asked[0] == (one.inst.public_key, first.root_id)
            assert await holds(the_hub, first.root_id)
            assert not await holds(the_hub, second.root_id)


async def test_quotas_bound_the_trees_and_bytes_one_client_brings(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            hub(tmp_path / "hub", "any", TreeQuota(max_trees=1, max_bytes=20_000)) as (
                the_hub,
                _,
                http_at,
            ),
            ws_node(tmp_path / "c1", QUIET) as one,
        ):
            # Over HTTP the hub cannot pull from the client: all it stores, it was pushed.
            tree, hub_key = await backed_up(one, http_at, "first")
            with pytest.raises(RemoteError, match="max_trees"):
                await backed_up(one, http_at, "second")
            for n in range(40):  # over 1,000 bytes an entry: twice 20,000 bytes in all
                async with tree.transaction() as op:
                    op.doc("d").set(f"k{n}", "x" * 1000)

            async def refused() -> bool:  # the pushes of those commits, in the end
                return "at most 20000" in str((await one.sync.status()).peers[hub_key].last_error)

            await until(refused)
            kept = await the_hub.inst.open_tree(tree.root_id)
            assert len((await kept.doc("d")).to_dict()) < 30


async def test_a_policy_that_is_none_of_the_forms_is_refused_at_once(tmp_path: Path) -> None:
    async with eidetica.open_instance(None) as inst:
        for wrong in ("everyone", 7, ["not-a-key"]):
            with pytest.raises((InvalidValue, EideticaError)):
                async with open_sync(inst, accept_trees=wrong):  # type: ignore[arg-type]
                    pass
