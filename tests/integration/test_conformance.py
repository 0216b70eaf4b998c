"""The same scenarios over every transport: sim, HTTP and WebSocket.

Real sockets on 127.0.0.1:0 and real SQLite files for HTTP and WebSocket; the
actors must not care which transport carries them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import RemoteError
from tests.waiting import settle

LISTEN = {"sim": "sim://{name}", "http": "http://127.0.0.1:0", "ws": "ws://127.0.0.1:0"}


@pytest.fixture(params=sorted(LISTEN))
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_two_nodes_sync_both_ways_and_push(scheme: str, tmp_path: Path) -> None:
    network = SimNetwork()
    with trio.fail_after(30):
        async with (
            eidetica.open_instance(tmp_path / "a") as a,
            eidetica.open_instance(tmp_path / "b") as b,
            open_sync(a, network=network, name="a") as a_sync,
            open_sync(b, network=network, name="b") as b_sync,
        ):
            tree = await a.create_tree(name="t")
            await tree.grant(b.public_key, "write")
            a_address = await a_sync.start_server(LISTEN[scheme].format(name="a"))
            b_address = await b_sync.start_server(LISTEN[scheme].format(name="b"))
            assert a_address.startswith(f"{scheme}://") and not a_address.endswith(":0")
            peer_a = await b_sync.connect(a_address)
            assert peer_a == a.public_key
            await b_sync.add_tree_sync(peer_a, tree.root_id)
            await b_sync.sync_with_peer(peer_a)  # b pulls the tree
            peer_b = await a_sync.connect(b_address)
            await a_sync.add_tree_sync(peer_b, tree.root_id)
            theirs = await b.open_tree(tree.root_id)
            async with theirs.transaction() as op:
                op.doc("d").set("from_b", 1)  # pushed to a
            async with tree.transaction() as op:
                op.doc("d").set("from_a", 2)  # pushed to b
            await settle(tree, theirs)
            assert (await tree.doc("d")).to_dict() == {"from_a": 2, "from_b": 1}
            assert (await theirs.doc("d")).to_dict() == {"from_a": 2, "from_b": 1}


async def test_a_tree_the_peer_may_not_read_is_not_found(scheme: str, tmp_path: Path) -> None:
    network = SimNetwork()
    with trio.fail_after(30):
        async with (
            eidetica.open_instance(tmp_path / "a") as a,
            eidetica.open_instance(None) as b,
            open_sync(a, network=network, name="a") as a_sync,
            open_sync(b, network=network, name="b") as b_sync,
        ):
            private = await a.create_tree(name="private")
            address = await a_sync.start_server(LISTEN[scheme].format(name="a"))
            peer_a = await b_sync.connect(address)
            await b_sync.add_tree_sync(peer_a, private.root_id)
            with pytest.raises(RemoteError, match="not-found"):
                await b_sync.sync_with_peer(peer_a)
            assert b.backend.has([private.root_id]) == set()
