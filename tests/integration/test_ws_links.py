"""Two-way WebSocket links between real nodes on 127.0.0.1: a node that only dialled
gets pushes over its own link, two nodes that dial each other keep one link, and a
lost link is redialled with backoff and caught up on."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from eidetica.actors.supervisor import SyncConfig
from eidetica.storage.tree import Tree
from tests.nodes import WsNode, ws_node
from tests.waiting import links_settle, settle, stored

ANY_PORT = "ws://127.0.0.1:0"
NO_POLLING = SyncConfig(periodic_sync=3600, connection_check=3600)
"""No timer fires within a test's bound: whatever arrives was pushed."""


async def served_to(server: WsNode, client: WsNode, permission: str) -> tuple[Tree, str]:
    """A tree of the server's, which the client may use with ``permission``, served at
    an address the client dials, relates and syncs once. Returns the tree and address."""
    tree = await server.inst.create_tree(name="notes")
    await tree.grant(client.inst.public_key, permission)
    at = await server.sync.start_server(ANY_PORT)
    peer = await client.sync.connect(at)
    await client.sync.add_tree_sync(peer, tree.root_id)
    await client.sync.sync_with_peer(peer)
    return tree, at


async def test_a_commit_reaches_a_peer_that_only_dialled(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            ws_node(tmp_path / "server", NO_POLLING) as server,
            ws_node(tmp_path / "client", NO_POLLING) as client,
        ):
            # The client listens nowhere: it dials, and syncs the tree once.
            tree, _ = await served_to(server, client, "write")
            theirs = await client.inst.open_tree(tree.root_id)

            async with tree.transaction() as op:
                op.doc("todo").set("milk", 1)
            await stored(client.inst, (await tree.tips())[0])  # pushed over the client's link
            async with theirs.transaction() as op:
                op.doc("todo").set("eggs", 2)
            await settle(tree, theirs)

            status = (await server.sync.status()).peers[client.inst.public_key]
            assert str(status.address).startswith("ws-in://") and status.dial is None
            assert (await tree.doc("todo")).to_dict() == {"milk": 1, "eggs": 2}
    assert server.ws.dials == 0 and client.ws.dials == 1


async def test_nodes_that_dial_each_other_keep_one_link(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            ws_node(tmp_path / "a", NO_POLLING) as (a, a_sync, a_ws),
            ws_node(tmp_path / "b", NO_POLLING) as (b, b_sync, b_ws),
        ):
            tree = await a.create_tree(name="notes")
            await tree.grant(b.public_key, "write")
            a_at = await a_sync.start_server(ANY_PORT)
            b_at = await b_sync.start_server(ANY_PORT)
            # Both dial, at once: two connections come up, and one must go.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a_sync.connect, b_at)
                nursery.start_soon(b_sync.connect, a_at)
            await links_settle(a_ws, b_ws, count=1)
            assert a_ws.dials == 1 and b_ws.dials == 1

            # The link both kept is the one the smaller key dialled.
            small, large = sorted([(a.public_key, a_sync), (b.public_key, b_sync)])
            small_view = (await small[1].status()).peers[large[0]]
            large_view = (await large[1].status()).peers[small[0]]
            assert str(small_view.address).startswith("ws://")
            assert str(large_view.address).startswith("ws-in://")
            # Both still know where the other listens, for a redial.
            assert {small_view.dial, large_view.dial} == {a_at, b_at}

            await b_sync.add_tree_sync(a.public_key, tree.root_id)
            await b_sync.sync_with_peer(a.public_key)
            await a_sync.add_tree_sync(b.public_key, tree.root_id)
            theirs = await b.open_tree(tree.root_id)
            async with tree.transaction() as op:
                op.doc("d").set("from_a", 1)
            async with theirs.transaction() as op:
                op.doc("d").set("from_b", 2)
            await settle(tree, theirs)
            assert (await theirs.doc("d")).to_dict() == {"from_a": 1, "from_b": 2}
            assert len(a_ws.links()) == 1 and len(b_ws.links()) == 1


async def test_a_lost_link_is_redialled_and_the_peer_catches_up(tmp_path: Path) -> None:
    quick = SyncConfig(periodic_sync=3600, connection_check=3600, redial_min=0.01)
    with trio.fail_after(20):
        async with (
            ws_node(tmp_path / "server", NO_POLLING) as server,
            ws_node(tmp_path / "client", quick) as client,
        ):
            tree, at = await served_to(server, client, "read")

            # The server goes away, taking the link with it, and commits meanwhile.
            await server.sync.stop_server(at)
            await links_settle(client.ws, count=0)
            async with tree.transaction() as op:
                op.doc("todo").set("while_away", 1)
            missed = (await tree.tips())[0]
            assert client.inst.backend.get(missed) is None

            # Back at the same address: the client redials by itself and catches up.
            assert await server.sync.start_server(at) == at
            await stored(client.inst, missed)
            async with tree.transaction() as op:
                op.doc("todo").set("after", 2)
            await stored(client.inst, (await tree.tips())[0])  # pushed over the new link
    assert client.ws.dials >= 2


async def test_a_removed_peer_is_not_registered_again_by_its_requests(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            ws_node(tmp_path / "server", NO_POLLING) as server,
            ws_node(tmp_path / "client", NO_POLLING) as client,
        ):
            tree, _ = await served_to(server, client, "read")
            assert client.inst.public_key in await server.sync.peers()
            await server.sync.remove_peer(client.inst.public_key)
            await client.sync.sync_with_peer(server.inst.public_key)  # it syncs on, as it may
            assert client.inst.public_key not in await server.sync.peers()
            async with tree.transaction() as op:
                op.doc("d").set("after_removal", 1)
            # Nothing is pushed to it now; it still pulls what it may read.
            assert (await server.sync.status()).peers == {}
            await client.sync.sync_with_peer(server.inst.public_key)
            await stored(client.inst, (await tree.tips())[0])


async def test_after_a_blip_the_larger_key_keeps_its_own_redial(tmp_path: Path) -> None:
    """The smaller key's dial was the link both kept; when it drops, the larger key's
    redial (the first to come) must not be thrown away for the dead link."""
    slow = SyncConfig(periodic_sync=3600, connection_check=3600, redial_min=600)
    fast = SyncConfig(periodic_sync=3600, connection_check=3600, redial_min=0.01)
    with trio.fail_after(20):
        async with ws_node(tmp_path / "x") as x, ws_node(tmp_path / "y") as y:
            small_key, large_key = sorted([x.inst.public_key, y.inst.public_key])
        async with (
            ws_node(tmp_path / ("x" if x.inst.public_key == small_key else "y"), slow) as small,
            ws_node(tmp_path / ("y" if x.inst.public_key == small_key else "x"), fast) as large,
        ):
            assert (small.inst.public_key, large.inst.public_key) == (small_key, large_key)
            small_at = await small.sync.start_server(ANY_PORT)
            large_at = await large.sync.start_server(ANY_PORT)
            await small.sync.connect(large_at)
            await large.sync.connect(small_at)
            await links_settle(small.ws, large.ws, count=1)
            assert small.ws.links() == [large_at]

            small.ws.close(large_at)  # the one link drops, as in a network blip
            await links_settle(small.ws, large.ws, count=0)
            await links_settle(small.ws, large.ws, count=1)  # the larger key's redial
            assert large.ws.links() == [small_at]
            await trio.testing.wait_all_tasks_blocked(0.05)  # both engines are done with it
            view = (await large.sync.status()).peers[small_key]
            assert view.address == small_at
            # And it carries traffic: the small node reaches the large one over it.
            await small.sync.sync_with_peer(large_key)


async def test_a_dial_only_peer_related_by_the_operator_keeps_its_trees_over_a_blip(
    tmp_path: Path,
) -> None:
    quick = SyncConfig(periodic_sync=3600, connection_check=3600, redial_min=0.01)
    with trio.fail_after(20):
        async with (
            ws_node(tmp_path / "server", NO_POLLING) as server,
            ws_node(tmp_path / "client", quick) as client,
        ):
            tree, at = await served_to(server, client, "read")
            other = await server.inst.create_tree(name="other")  # never asked for by it
            await other.grant(client.inst.public_key, "read")
            client_key = client.inst.public_key
            await server.sync.add_tree_sync(client_key, other.root_id)  # the operator's
            before = client.ws.link_version
            client.ws.close(at)  # a blip: the client redials by itself
            while client.ws.link_version < before + 2:  # closed, then open again
                await client.ws.link_changed(client.ws.link_version)
            await links_settle(server.ws, client.ws, count=1)
            await trio.testing.wait_all_tasks_blocked(0.05)  # both engines are done with it
            view = (await server.sync.status()).peers[client_key]
            assert str(view.address).startswith("ws-in://") and view.dial is None
            assert sorted(view.trees) == sorted([tree.root_id, other.root_id])


async def test_a_removed_peer_stays_removed_after_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with ws_node(tmp_path / "client", NO_POLLING) as client:
            async with ws_node(tmp_path / "server", NO_POLLING) as server:
                _, at = await served_to(server, client, "read")
                await server.sync.remove_peer(client.inst.public_key)
            async with ws_node(tmp_path / "server", NO_POLLING) as server:  # restarted
                assert await server.sync.start_server(at) == at
                await client.sync.sync_with_peer(server.inst.public_key)  # it syncs on
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert client.inst.public_key not in await server.sync.peers()
                # Naming it again on purpose registers it again.
                await server.sync.add_peer(client.inst.public_key, "ws://127.0.0.1:1")
                await client.sync.sync_with_peer(server.inst.public_key)
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert client.inst.public_key in await server.sync.peers()
