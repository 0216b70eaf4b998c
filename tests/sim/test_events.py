"""What users see of the engine: ``sync.events()``, ``sync.wait_synced`` and
``tree.changes()``, over the sim network under trio's mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import pytest
import trio
import trio.testing

import eidetica
import eidetica.events as news
from eidetica.actors.bus import Subscription
from eidetica.actors.sync import Sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import NotShared, SyncError


class Linked(NamedTuple):
    host: eidetica.Instance
    client: eidetica.Instance
    host_sync: Sync
    client_sync: Sync
    host_key: str
    tree: eidetica.Tree
    network: SimNetwork
    events: Subscription
    """The client's events, from before it connected."""


@asynccontextmanager
async def linked(entries: int = 1) -> AsyncIterator[Linked]:
    """A host holding a tree of ``entries`` commits, and a client linked to it that
    syncs the tree (nothing pulled yet)."""
    network = SimNetwork()
    async with eidetica.open_instance(None) as host, eidetica.open_instance(None) as client:
        tree = await host.create_tree(name="notes")
        await tree.grant(client.public_key, "write")
        for n in range(entries - 1):
            async with tree.transaction() as op:
                op.doc("log").set(f"n{n}", n)
        async with (
            host.sync(network=network, name="host") as host_sync,
            client.sync(network=network, name="client") as client_sync,
        ):
            address = await host_sync.start_server("sim://host")
            async with client_sync.events() as events:
                host_key = await client_sync.connect(address)
                await client_sync.add_tree_sync(host_key, tree.root_id)
                yield Linked(host, client, host_sync, client_sync, host_key, tree, network, events)


async def next_of(events: Subscription, kind: type[news.Event]) -> news.Event:
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


async def test_a_pull_is_told_as_started_progress_and_finished_with_its_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with linked(entries=2_500) as node:
            total = len(await node.tree.entries())  # the grant's entry too
            linked_event = await next_of(node.events, news.PeerLinked)
            assert linked_event == news.PeerLinked(node.host_key, "sim://host")
            await node.client_sync.sync_with_peer(node.host_key)
            told = [event async for event in _until_finished(node.events)]
    kinds = [type(event) for event in told]
    assert kinds[0] is news.SyncStarted
    progress = [event for event in told if isinstance(event, news.SyncProgress)]
    assert len(progress) == 3  # three pages of at most 1,024
    assert [p.entries for p in progress] == [1024, 2048, total]
    assert all(p.expected == total for p in progress)  # the host said how many
    assert progress[-1].bytes > total * 100
    finished = told[-1]
    assert isinstance(finished, news.SyncFinished)
    assert (finished.received, finished.bytes) == (total, progress[-1].bytes)
    assert finished.complete
    received = [event for event in told if isinstance(event, news.EntriesReceived)]
    assert sum(event.count for event in received) == total


async def _until_finished(events: Subscription) -> AsyncIterator[news.Event]:
    async for event in events:
        yield event
        if isinstance(event, news.SyncFinished):
            return


async def test_a_lost_and_relinked_peer_is_told_and_a_push_to_it_fails_into_the_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with linked() as node:
            await node.client_sync.wait_synced(node.host_key, node.tree.root_id)
            async with node.host_sync.events() as host_events:
                node.network.partition("host", "client")
                copy = await node.client.open_tree(node.tree.root_id)
                async with copy.transaction() as op:
                    op.doc("todo").set("milk", True)
                lost = await next_of(node.events, news.PeerLost)
                assert isinstance(lost, news.PeerLost) and lost.redialling
                failed = await next_of(node.events, news.PushFailed)
                assert failed == news.PushFailed(node.host_key, node.tree.root_id, 1, 1)
                node.network.heal_all()
                again = await next_of(node.events, news.PeerLinked)
                assert isinstance(again, news.PeerLinked) and again.again
                got = await next_of(host_events, news.EntriesReceived)
                assert isinstance(got, news.EntriesReceived)
                assert (got.peer, got.tree, got.count) == (
                    node.client.public_key,
                    node.tree.root_id,
                    1,
                )


async def test_wait_synced_waits_out_a_partition_then_both_hold_the_same_tips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with linked(entries=3) as node:
            node.network.partition("host", "client")
            async with node.tree.transaction() as op:
                op.doc("todo").set("eggs", True)
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def waiter() -> None:
                    await node.client_sync.wait_synced(node.host_key, node.tree.root_id)
                    done.set()

                nursery.start_soon(waiter)
                await trio.sleep(120)  # simulated: two minutes of partition
                assert not done.is_set()
                node.network.heal_all()
                await done.wait()
            copy = await node.client.open_tree(node.tree.root_id)
            assert await copy.tips() == await node.tree.tips()
            assert (await copy.doc("todo")).get("eggs") is True


async def test_wait_synced_refuses_a_tree_not_shared_with_the_peer_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with linked() as node:
            other = await node.client.create_tree(name="private")
            with pytest.raises(NotShared, match="add_tree_sync"):
                await node.client_sync.wait_synced(node.host_key, other.root_id)
            with pytest.raises(SyncError, match="unknown peer"):
                await node.client_sync.wait_synced("ed25519:nobody", node.tree.root_id)


async def test_tree_changes_wake_for_that_tree_only_and_fold_what_came_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with linked() as node:
            await node.client_sync.wait_synced(node.host_key, node.tree.root_id)
            copy = await node.client.open_tree(node.tree.root_id)
            elsewhere = await node.client.create_tree(name="elsewhere")
            changes = copy.changes()
            async with elsewhere.transaction() as op:
                op.doc("x").set("y", 1)  # another tree: no wake
            with trio.move_on_after(30):
                await changes.__anext__()
                raise AssertionError("woken by another tree's commit")
            for value in range(3):  # the host writes; each push is stored here
                async with node.tree.transaction() as op:
                    op.doc("todo").set("n", value)
            await node.client_sync.wait_synced(node.host_key, node.tree.root_id)
            change = await changes.__anext__()
            assert change.tree == copy.root_id
            assert change.tips == tuple(await node.tree.tips())
            assert change.version >= 1


async def test_the_events_end_when_the_engine_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with eidetica.open_instance(None) as inst:
            async with inst.sync() as sync:
                events = sync.events()
            assert [event async for event in events] == []


async def test_status_shows_a_pull_under_way_with_its_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with linked(entries=2_500) as node:
            # The pull is one page, stored 1,024 entries at a time: hold the second
            # batch until the status has been read, so the pull is under way then.
            read = trio.Event()
            receive = node.client.receive
            batches = 0

            async def held(tree: str, raws: Any, *args: Any, **kwargs: Any) -> Any:
                nonlocal batches
                raws = list(raws)
                if raws:
                    batches += 1
                    if batches == 2:
                        await read.wait()
                return await receive(tree, raws, *args, **kwargs)

            node.client.receive = held  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.client_sync.sync_with_peer, node.host_key)
                progress = await next_of(node.events, news.SyncProgress)
                assert isinstance(progress, news.SyncProgress)
                syncing = (await node.client_sync.status()).syncing
                read.set()
                assert [(s.peer, s.tree, s.entries) for s in syncing] == [
                    (node.host_key, node.tree.root_id, progress.entries)
                ]
                assert syncing[0].expected == len(await node.tree.entries())
            assert (await node.client_sync.status()).syncing == []  # ended: gone
