"""HTTP parity, over real sockets on 127.0.0.1: a node that only dials another over
HTTP hears of its commits at once, through a watch the listener holds, as a
WebSocket dialler does through the push back over its link; a watch tells nothing of
a tree the watcher may not read, past the caps is answered busy, and ends when its
client goes away or its server stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.service import SyncService
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.base import Handler
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.watching import Watching
from eidetica.errors import RemoteError, TreeNotFound
from eidetica.protocol.codec import JSON
from eidetica.protocol.messages import Changed, Watch
from tests.waiting import watches_held

ANY_PORT = "http://127.0.0.1:0"
NO_POLLING = SyncConfig(periodic_sync=3600, connection_check=3600)
"""No timer fires within a test's bound: whatever arrives was pushed or watched for."""
NOTHING = "0" * 64
"""A tree id no node holds."""


@asynccontextmanager
async def node(
    path: Path, config: SyncConfig = NO_POLLING
) -> AsyncIterator[tuple[eidetica.Instance, Sync]]:
    async with eidetica.open_instance(path) as inst, open_sync(inst, config=config) as sync:
        yield inst, sync


async def shows(tree: eidetica.Tree, value: int) -> None:
    """Wait until ``tree``'s document ``d`` holds ``value`` at ``n``."""
    while True:
        since = tree.instance.version
        if (await tree.doc("d")).get("n") == value:
            return
        await tree.instance.changed(since)


async def copy_of(inst: eidetica.Instance, tree_id: str) -> eidetica.Tree:
    """``inst``'s copy of a tree, once it holds one."""
    while True:
        since = inst.version
        try:
            return await inst.open_tree(tree_id)
        except TreeNotFound:
            await inst.changed(since)


class WatchesInFlight:
    """A node's HTTP transport, counting the watches it has in flight; anything else
    is the transport's own."""

    def __init__(self, inner: HttpTransport) -> None:
        self.scheme = inner.scheme
        self._inner = inner
        self.open = 0
        self._moved = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self._inner.serve(address, handler, task_status=task_status)

    async def request(self, address: str, data: bytes) -> bytes:
        if not isinstance(JSON.decode(data).body, Watch):
            return await self._inner.request(address, data)
        self._move(1)
        try:
            return await self._inner.request(address, data)
        finally:
            self._move(-1)

    def _move(self, by: int) -> None:
        self.open += by
        self._moved.set()
        self._moved = trio.Event()

    async def settled(self, count: int) -> None:
        """Wait until exactly ``count`` watches are in flight."""
        while self.open != count:
            await self._moved.wait()


async def commit(tree: eidetica.Tree, value: int) -> None:
    async with tree.transaction() as op:
        op.doc("d").set("n", value)


async def test_commits_cross_both_ways_at_once_with_a_node_that_only_dialled_over_http(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):  # the periodic sync is an hour away
        async with node(tmp_path / "a") as (a, a_sync), node(tmp_path / "b") as (b, b_sync):
            tree = await a.create_tree(name="notes")
            await tree.grant(b.public_key, "write")
            peer = await b_sync.connect(await a_sync.start_server(ANY_PORT))
            # B listens nowhere, and never asks for a sync: its watch brings the tree.
            await b_sync.add_tree_sync(peer, tree.root_id)
            theirs = await copy_of(b, tree.root_id)
            for value in range(3):
                await commit(tree, value)
                await shows(theirs, value)
            await commit(theirs, 10)
            await shows(tree, 10)
            await commit(tree, 11)
            await shows(theirs, 11)
            # A knows B (it proved its key) but cannot call it back: nothing was pushed.
            seen = (await a_sync.status()).peers[b.public_key]
            assert (seen.state, seen.address, seen.pushes) == ("down", None, 0)


async def test_a_dialler_stops_watching_a_peer_it_removes(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            node(tmp_path / "a") as (a, a_sync),
            eidetica.open_instance(tmp_path / "b") as b,
            HttpTransport() as http,
        ):
            watches = WatchesInFlight(http)
            async with open_sync(b, config=NO_POLLING, transports={"http": watches}) as b_sync:
                tree = await a.create_tree(name="notes")
                await tree.grant(b.public_key, "read")
                peer = await b_sync.connect(await a_sync.start_server(ANY_PORT))
                await b_sync.add_tree_sync(peer, tree.root_id)
                await copy_of(b, tree.root_id)
                await watches.settled(1)
                await b_sync.remove_peer(peer)
                await watches.settled(0)
                await commit(tree, 1)
                await trio.testing.wait_all_tasks_blocked()
                assert watches.open == 0


@asynccontextmanager
async def watched_node(
    limits: ServerLimits | None = None,
) -> AsyncIterator[tuple[eidetica.Instance, Watching, Link, trio.CancelScope]]:
    """A node whose service a bare HTTP server serves, its watches, a link to it from a
    node that may read its trees, and the scope that stops the server."""
    async with (
        eidetica.open_instance(None) as inst,
        eidetica.open_instance(None) as watcher,
        HttpTransport() as client,
        trio.open_nursery() as servers,
    ):
        watching = Watching(inst, limits)
        service = SyncService(inst, JSON, watching=watching, limits=limits)
        at = await servers.start(HttpTransport(limits=limits).serve, ANY_PORT, service.handle)
        link = Link(client, at, JSON)
        await link.handshake(watcher)
        yield inst, watching, link, servers.cancel_scope
        servers.cancel_scope.cancel()


async def test_a_watch_over_http_never_reports_a_tree_the_watcher_may_not_read() -> None:
    async with watched_node() as (inst, _, link, _):
        secret = await inst.create_tree(name="secret")
        shared = await inst.create_tree(name="shared")
        await shared.grant("*", "read")
        with trio.fail_after(10):
            answers: list[Changed] = []
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    answers.append(await link.watch([(secret.root_id, []), (NOTHING, [])], wait=2))

                nursery.start_soon(watch)
                await commit(secret, 1)
                await commit(secret, 2)
            assert answers == [Changed(trees=())]  # as for a tree no node holds
            both = await link.watch([(secret.root_id, []), (shared.root_id, [])], wait=2)
            assert [news.tree for news in both.trees] == [shared.root_id]


async def test_watches_over_http_past_the_cap_are_answered_busy() -> None:
    limits = ServerLimits(max_watches_per_session=1)
    async with watched_node(limits) as (inst, watching, link, _):
        tree = await inst.create_tree(name="t")
        await tree.grant("*", "read")
        watched = [(tree.root_id, await tree.tips())]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: link.watch(watched, wait=20))
                await watches_held(watching, 1)
                with pytest.raises(RemoteError) as busy:
                    await link.watch(watched, wait=20)
                assert busy.value.code == "busy"
                await commit(tree, 1)  # the held one is answered; the block ends


async def test_a_held_watch_ends_when_its_client_goes_away() -> None:
    async with watched_node() as (inst, watching, link, _):
        tree = await inst.create_tree(name="t")
        await tree.grant("*", "read")
        watched = [(tree.root_id, await tree.tips())]
        with trio.fail_after(10):
            async with trio.open_nursery() as client:
                client.start_soon(lambda: link.watch(watched, wait=20))
                await watches_held(watching, 1)
                client.cancel_scope.cancel()  # the client gives up: its connection closes
            await watches_held(watching, 0)
            # The server is not stuck: the next watch is answered as soon as there is news.
            async with trio.open_nursery() as nursery:
                answers: list[Changed] = []

                async def watch() -> None:
                    answers.append(await link.watch(watched, wait=20))

                nursery.start_soon(watch)
                await watches_held(watching, 1)
                await commit(tree, 1)
            assert [news.tree for news in answers[0].trees] == [tree.root_id]


async def test_a_server_that_stops_answers_its_held_watches_at_once() -> None:
    answers: list[tuple[float, Changed]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as client:
            async with watched_node() as (inst, watching, link, server):
                tree = await inst.create_tree(name="t")
                await tree.grant("*", "read")

                async def watch() -> None:
                    answer = await link.watch([(tree.root_id, await tree.tips())], wait=20)
                    answers.append((trio.current_time(), answer))

                client.start_soon(watch)
                await watches_held(watching, 1)
                began = trio.current_time()
                server.cancel()
            stopped = trio.current_time()
    ((answered, answer),) = answers
    assert answer == Changed(trees=())
    # Not held for the 3 s that requests in flight may run on after a stop.
    assert answered - began < 1.0 and stopped - began < 2.0
