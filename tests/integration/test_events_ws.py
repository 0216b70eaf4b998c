"""Events, ``wait_synced`` and ``tree.changes()`` between real nodes: SQLite files,
WebSocket and HTTP servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import eidetica.events as news
from eidetica.actors.bus import Subscription
from tests.nodes import ws_node


async def first(events: Subscription, kind: type[news.Event]) -> news.Event:
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_a_sync_over_real_sockets_is_told_and_wait_synced_returns_on_equal_tips(
    tmp_path: Path, scheme: str
) -> None:
    with trio.fail_after(30):
        async with ws_node(tmp_path / "a") as a, ws_node(tmp_path / "b") as b:
            tree = await a.inst.create_tree(name="notes")
            await tree.grant(b.inst.public_key, "write")
            for n in range(50):
                async with tree.transaction() as op:
                    op.doc("log").set(f"n{n}", n)
            at = await a.sync.start_server(f"{scheme}://127.0.0.1:0")
            async with b.sync.events() as events, a.sync.events() as host_events:
                peer = await b.sync.connect(at)
                assert await first(events, news.PeerLinked) == news.PeerLinked(peer, at)
                await b.sync.add_tree_sync(peer, tree.root_id)
                await b.sync.wait_synced(peer, tree.root_id)
                received = 0  # by a sync round, or a watch's answer over HTTP
                while received < 52:  # root, grant, 50
                    got = await first(events, news.EntriesReceived)
                    assert isinstance(got, news.EntriesReceived) and got.peer == peer
                    received += got.count
                assert received == 52
                copy = await b.inst.open_tree(tree.root_id)
                assert await copy.tips() == await tree.tips()

                changes = tree.changes()
                async with copy.transaction() as op:
                    op.doc("log").set("from-b", True)
                change = await changes.__anext__()  # pushed, or answered to a's watch
                assert change.tips == tuple(await copy.tips())
                pushed = await first(host_events, news.EntriesReceived)
                assert isinstance(pushed, news.EntriesReceived)
                assert (pushed.peer, pushed.count) == (b.inst.public_key, 1)
