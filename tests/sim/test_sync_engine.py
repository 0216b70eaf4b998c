"""Nodes syncing through the actor engine over the simulated network."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.state import FLUSH_EVERY, SyncState
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import RemoteError, SyncError


@dataclass
class Node:
    inst: eidetica.Instance
    sync: Sync
    address: str


@asynccontextmanager
async def cluster(
    count: int, network: SimNetwork, config: SyncConfig | None = None
) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for index in range(count):
            name = f"n{index}"
            inst = await stack.enter_async_context(eidetica.open_instance(None))
            sync = await stack.enter_async_context(
                open_sync(inst, network=network, name=name, config=config)
            )
            nodes.append(Node(inst, sync, await sync.start_server(f"sim://{name}")))
        yield nodes


async def share(owner: Node, other: Node, tree: eidetica.Tree) -> str:
    """Let ``other`` read and write ``tree`` and link them; return other's key."""
    await tree.grant(other.inst.public_key, "write")
    return await link(owner, other, tree.root_id)


async def link(one: Node, other: Node, tree_id: str) -> str:
    """Connect two nodes both ways and sync ``tree_id`` between them."""
    peer = await one.sync.connect(other.address)
    await one.sync.add_tree_sync(peer, tree_id)
    back = await other.sync.connect(one.address)
    await other.sync.add_tree_sync(back, tree_id)
    return peer


async def test_two_nodes_sync_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("from_a", 1)
            peer_b = await share(a, b, tree)
            assert peer_b == b.inst.public_key
            await a.sync.sync_with_peer(peer_b)  # bootstrap b
            theirs = await b.inst.open_tree(tree.root_id)
            async with theirs.transaction() as op:
                op.doc("todo").set("from_b", 2)
            async with tree.transaction() as op:
                op.doc("todo").set("from_a_again", 3)
            await a.sync.sync_with_peer(peer_b)
            assert await tree.tips() == await theirs.tips()
            expected = {"from_a": 1, "from_b": 2, "from_a_again": 3}
            assert (await tree.doc("todo")).to_dict() == expected
            assert (await theirs.doc("todo")).to_dict() == expected


async def test_a_commit_is_pushed_to_related_peers(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            async with tree.transaction() as op:
                op.doc("d").set("pushed", True)
            theirs = await b.inst.open_tree(tree.root_id)
            await trio.testing.wait_all_tasks_blocked()
            assert (await theirs.doc("d")).get("pushed") is True
            assert trio.current_time() < 1  # the push needed no timer
            # both sides count what the other side started, as well as their own
            # syncs; counts reach storage within FLUSH_EVERY
            await trio.sleep(FLUSH_EVERY)
            await trio.testing.wait_all_tasks_blocked()
            assert (await (await SyncState.open(a.inst)).metadata(peer_b)).pushes == 1
            served = await (await SyncState.open(b.inst)).metadata(a.inst.public_key)
            assert served.requests_served >= 1


async def test_a_write_on_a_reaches_c_through_b(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with cluster(3, SimNetwork()) as (a, b, c):
            tree = await a.inst.create_tree(name="t")
            await tree.grant("*", "write")
            peer_b = await link(a, b, tree.root_id)
            await a.sync.sync_with_peer(peer_b)
            peer_c = await link(b, c, tree.root_id)
            await b.sync.sync_with_peer(peer_c)
            async with tree.transaction() as op:
                op.doc("d").set("chain", "a")
            theirs = await c.inst.open_tree(tree.root_id)
            await trio.testing.wait_all_tasks_blocked()
            assert (await theirs.doc("d")).get("chain") == "a"
            assert trio.current_time() < 1  # forwarded at once, not by the 5-minute timer


async def test_a_dropped_notice_is_repaired_by_the_periodic_sync_at_five_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(3600):
        async with cluster(2, SimNetwork()) as (a, b), eidetica.open_instance(None) as elsewhere:
            tree = await a.inst.create_tree(name="t")
            await tree.grant(elsewhere.public_key, "write")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            # An entry reaches A without a commit notice (as if the notice was dropped).
            await elsewhere.import_entries(await tree.entries())
            async with (await elsewhere.open_tree(tree.root_id)).transaction() as op:
                op.doc("d").set("late", True)
            await a.inst.import_entries(await (await elsewhere.open_tree(tree.root_id)).entries())
            theirs = await b.inst.open_tree(tree.root_id)
            await trio.sleep_until(299)
            await trio.testing.wait_all_tasks_blocked()
            assert (await theirs.doc("d")).get("late") is None  # not before 5 minutes
            await trio.sleep_until(301)
            await trio.testing.wait_all_tasks_blocked()
            assert (await theirs.doc("d")).get("late") is True


async def test_failed_pushes_retry_at_2_4_8_up_to_64_seconds_then_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    config = SyncConfig(
        retry_jitter=0.0,
        max_retries=9,
        periodic_sync=10_000,
        connection_check=10_000,
        breaker=BreakerConfig(failure_threshold=1_000),
    )
    with trio.fail_after(3600):
        async with cluster(2, network, config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            network.partition("n0", "n1")
            async with tree.transaction() as op:
                op.doc("d").set("x", 1)
            start = trio.current_time()
            await trio.sleep(1000)
            status = await a.sync.status()
            attempts = [t - start for t in status.peers[peer_b].attempts][-10:]
            gaps = [round(later - earlier) for earlier, later in itertools.pairwise(attempts)]
            assert gaps == [2, 4, 8, 16, 32, 64, 64, 64, 64]
            assert status.retries == [] and status.retries_dropped == 1


async def test_a_partition_heals_and_queued_entries_arrive_by_themselves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(3600):
        async with cluster(2, network) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            network.partition("n0", "n1")
            async with tree.transaction() as op:
                op.doc("d").set("x", "queued")
            await trio.sleep(20)
            network.heal_all()
            await trio.sleep(100)  # the retry due at 32 s (or the next) carries it
            theirs = await b.inst.open_tree(tree.root_id)
            assert (await theirs.doc("d")).get("x") == "queued"
            assert trio.current_time() < 300  # well before the periodic sync


async def test_a_tree_the_peer_may_not_read_is_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="private")
            peer_a = await b.sync.connect(a.address)
            await b.sync.add_tree_sync(peer_a, tree.root_id)
            with pytest.raises(RemoteError, match="not-found"):
                await b.sync.sync_with_peer(peer_a)
            assert b.inst.backend.has([tree.root_id]) == set()


async def test_unknown_peer_and_unknown_scheme_are_typed_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(1, SimNetwork()) as (a,):
            with pytest.raises(SyncError, match="unknown peer"):
                await a.sync.sync_with_peer("ed25519:nobody")
            with pytest.raises(SyncError, match="no transport"):
                await a.sync.connect("gopher://x")


def engine_tasks() -> list[str]:
    """Names of running tasks that belong to the sync engine."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    found: list[str] = []
    todo = [root]
    while todo:
        task = todo.pop()
        found.append(task.name)
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return [name for name in found if "eidetica.actors" in name]


async def test_leaving_the_block_ends_every_task() -> None:
    async with eidetica.open_instance(None) as inst:
        async with open_sync(inst, network=SimNetwork()) as sync:
            await sync.start_server("sim://solo")
            assert engine_tasks()  # supervisor, timer, server are running
        assert engine_tasks() == []
        with pytest.raises(SyncError):
            await sync.status()


async def test_after_shutdown_commands_fail_instead_of_hanging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(1, SimNetwork()) as (a,):
            await a.sync.shutdown()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(SyncError):
                await a.sync.status()


async def test_a_peer_added_by_key_is_dialled_in_the_background(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            await a.sync.add_peer(b.inst.public_key, b.address)
            await trio.testing.wait_all_tasks_blocked()
            assert await linked(a) == [b.inst.public_key]
            await a.sync.add_peer(a.inst.public_key, b.address)  # the wrong key: refused
            await trio.testing.wait_all_tasks_blocked()
            assert await linked(a) == [b.inst.public_key]
            wrong = (await a.sync.status()).peers[a.inst.public_key]
            assert wrong.state == "dialling" and "expected peer" in caplog.text


async def linked(node: Node) -> list[str]:
    """The peers ``node`` has a live link to."""
    status = await node.sync.status()
    return sorted(key for key, peer in status.peers.items() if peer.state == "up")


async def test_an_idle_sync_writes_nothing_to_the_sync_tree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            await trio.testing.wait_all_tasks_blocked()
            state = await SyncState.open(a.inst)
            before = len(await state.tree.entries())
            await a.sync.sync_with_peer(peer_b)  # nothing new on either side
            await trio.testing.wait_all_tasks_blocked()
            assert len(await state.tree.entries()) == before
            status = await a.sync.status()
            assert status.peers[peer_b].trees_last_synced[tree.root_id] is not None


async def test_a_relationship_alone_never_sends_a_tree_to_a_peer_that_may_not_read_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="secret")
            peer_b = await link(a, b, tree.root_id)  # related, but never granted read
            async with tree.transaction() as op:
                op.doc("d").set("secret", 1)
            await a.sync.sync_with_peer(peer_b)
            await trio.testing.wait_all_tasks_blocked()
            assert b.inst.backend.has(e.id for e in await tree.entries()) == set()
            await tree.grant(peer_b, "read")
            await a.sync.sync_with_peer(peer_b)
            assert (await (await b.inst.open_tree(tree.root_id)).doc("d")).get("secret") == 1


async def test_send_entries_pushes_now_and_stop_server_stops_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(2, SimNetwork()) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            elsewhere_entry = None
            async with eidetica.open_instance(None) as elsewhere:
                await tree.grant(elsewhere.public_key, "write")
                await elsewhere.import_entries(await tree.entries())
                async with (await elsewhere.open_tree(tree.root_id)).transaction() as op:
                    op.doc("d").set("sent", True)
                elsewhere_entry = op.entry
                await a.inst.import_entries(
                    await (await elsewhere.open_tree(tree.root_id)).entries()
                )
            assert elsewhere_entry is not None
            theirs = await b.inst.open_tree(tree.root_id)
            await a.sync.send_entries(peer_b, tree.root_id, [elsewhere_entry.id])
            await trio.testing.wait_all_tasks_blocked()
            assert (await theirs.doc("d")).get("sent") is True
            await b.sync.stop_server(b.address)
            # Nobody answers at b's address now. (The peers may still talk over the
            # link b dialled to a, if that is the link they kept.)
            with pytest.raises(eidetica.errors.Unreachable, match="nobody serves"):
                await a.sync.connect(b.address)


async def test_entries_pulled_from_one_peer_are_forwarded_to_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with cluster(3, SimNetwork()) as (a, b, c):
            tree = await a.inst.create_tree(name="t")
            await tree.grant("*", "write")
            host = await b.sync.connect(a.address)  # only b -> a: a never pushes to b
            await b.sync.add_tree_sync(host, tree.root_id)
            await b.sync.sync_with_peer(host)
            peer_c = await link(b, c, tree.root_id)
            await b.sync.sync_with_peer(peer_c)
            async with tree.transaction() as op:
                op.doc("d").set("pulled", True)
            await b.sync.sync_with_peer(host)  # b pulls it...
            await trio.testing.wait_all_tasks_blocked()
            theirs = await c.inst.open_tree(tree.root_id)
            assert (await theirs.doc("d")).get("pulled") is True  # ...and passes it on
