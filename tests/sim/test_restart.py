"""A node restarted from SQLite knows its peers, relationships, retries and cursors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

import eidetica
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.state import SYNC_TREE_KEY, SYNC_TREE_NAME, HistoryRecord, SyncState
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.sim import SimNetwork
from tests.waiting import stored


async def test_a_restart_resumes_relationships_and_the_persisted_retry_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    network = SimNetwork()
    directory = tmp_path / "a"
    with trio.fail_after(3600):
        async with (
            eidetica.open_instance(None) as b_inst,
            open_sync(b_inst, network=network, name="b") as b_sync,
        ):
            b_address = await b_sync.start_server("sim://b")
            async with eidetica.open_instance(directory) as a_inst:
                tree = await a_inst.create_tree(name="t")
                await tree.grant(b_inst.public_key, "write")
                async with open_sync(a_inst, network=network, name="a") as a_sync:
                    peer_b = await a_sync.connect(b_address)
                    await a_sync.add_tree_sync(peer_b, tree.root_id)
                    back = await b_sync.connect(await a_sync.start_server("sim://a"))
                    await b_sync.add_tree_sync(back, tree.root_id)
                    await a_sync.sync_with_peer(peer_b)
                    network.partition("a", "b")
                    async with tree.transaction() as op:  # its push fails: a retry
                        op.doc("d").set("waiting", True)
                    await trio.testing.wait_all_tasks_blocked()
                    assert len((await a_sync.status()).retries) == 1
                # Stopped with the retry pending; the sync tree kept it.
                state = await SyncState.open(a_inst)
                assert len(await state.retries()) == 1
                assert (await state.peer(peer_b)) is not None
                assert await state.cursor(peer_b, tree.root_id) is not None
            network.heal_all()
            async with (
                eidetica.open_instance(directory) as a_inst,
                open_sync(a_inst, network=network, name="a") as a_sync,
            ):
                await trio.sleep(10)  # reconnect, then the restored retry is due
                status = await a_sync.status()
                assert status.peers[peer_b].trees == [tree.root_id]
                theirs = await b_inst.open_tree(tree.root_id)
                assert (await theirs.doc("d")).get("waiting") is True
                assert status.retries == []
                assert trio.current_time() < 300  # before any periodic sync
                # delivered, so its record is gone too: a crash now would not resend it
                assert await (await SyncState.open(a_inst)).retries() == {}


@asynccontextmanager
async def cut_off_pair(
    network: SimNetwork, config: SyncConfig
) -> AsyncIterator[tuple[eidetica.Instance, Sync, eidetica.Instance, eidetica.Tree, str]]:
    """In-memory nodes a (with ``config``) and b, relating a tree of a's both ways and
    synced once, then partitioned: a's instance and engine, b's instance, the tree,
    and b's key."""
    async with (
        eidetica.open_instance(None) as b_inst,
        open_sync(b_inst, network=network, name="b") as b_sync,
        eidetica.open_instance(None) as a_inst,
        open_sync(a_inst, network=network, name="a", config=config) as a_sync,
    ):
        tree = await a_inst.create_tree(name="t")
        await tree.grant(b_inst.public_key, "write")
        peer_b = await a_sync.connect(await b_sync.start_server("sim://b"))
        await a_sync.add_tree_sync(peer_b, tree.root_id)
        back = await b_sync.connect(await a_sync.start_server("sim://a"))
        await b_sync.add_tree_sync(back, tree.root_id)
        await a_sync.sync_with_peer(peer_b)
        network.partition("a", "b")
        yield a_inst, a_sync, b_inst, tree, peer_b


async def test_a_push_that_used_up_its_attempts_leaves_no_record(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The persisted retry queue is a faithful copy of the live one: what the retry
    actor drops is dropped on disk as well."""
    network = SimNetwork()
    config = SyncConfig(max_retries=2, periodic_sync=10_000, connection_check=10_000)
    with trio.fail_after(3600):
        async with cut_off_pair(network, config) as (a_inst, a_sync, _, tree, _peer):
            async with tree.transaction() as op:  # its push fails, and fails again
                op.doc("d").set("never", True)
            await trio.sleep(600)
            assert (await a_sync.status()).retries_dropped == 1
            assert await (await SyncState.open(a_inst)).retries() == {}


async def write_previous_sync_tree(
    inst: eidetica.Instance,
    peer: str,
    address: str,
    *,
    tree: str,
    synced_tips: list[str],
    pending: str,
) -> None:
    """The sync tree as the version before node-local bookkeeping left it: every
    write of its SyncState one transaction, so one signed entry, at the same paths.
    Peer ``peer`` at ``address`` syncs ``tree``; one sync of 3 entries ended at
    ``synced_tips``; a push went through after one failure; the push of ``pending``
    failed twice and waits."""
    sync_tree = await inst.create_tree(SYNC_TREE_NAME)
    inst.backend.set_local(SYNC_TREE_KEY, sync_tree.root_id)
    async with sync_tree.transaction() as op:  # add_peer
        op.doc("peers").set((peer,), {"addresses": [address], "sync_trees": []})
    async with sync_tree.transaction() as op:  # add_relationship
        op.doc("peers").set((peer,), {"addresses": [address], "sync_trees": [tree]})
    async with sync_tree.transaction() as op:  # set_cursor
        cursor = {"last_sync_time": 1.0e9, "last_synced_tips": synced_tips, "total_synced_count": 3}
        op.doc("sync_state").set(("cursors", peer, tree), cursor)
    async with sync_tree.transaction() as op:  # record_sync
        state = op.doc("sync_state")
        metadata = {
            "average_sync_duration_ms": 12.0,
            "failed_sync_count": 0,
            "successful_sync_count": 1,
            "total_entries_synced": 3,
        }
        state.set(("metadata", peer), metadata)
        history = {"duration_ms": 12.0, "entries": 3, "ok": True, "peer": peer}
        state.set(("history", f"{0:020d}"), history)
    delivered = {"attempts": 1, "entry_ids": [synced_tips[0]], "peer": peer, "tree": tree}
    async with sync_tree.transaction() as op:  # put_retry, then the push went through
        op.doc("retry").set(("0" * 32,), delivered)
    async with sync_tree.transaction() as op:  # drop_retry
        op.doc("retry").delete(("0" * 32,))
    for attempts in (1, 2):  # put_retry after each failure
        waiting = {"attempts": attempts, "entry_ids": [pending], "peer": peer, "tree": tree}
        async with sync_tree.transaction() as op:
            op.doc("retry").set(("1" * 32,), waiting)


async def previous_version_node(
    directory: Path, b_inst: eidetica.Instance, b_address: str
) -> tuple[str, str]:
    """A SQLite node as the earlier version left it in ``directory``: a tree it syncs
    with b, whose last sync gave b all but one entry, that one's push waiting to be
    retried. Returns the tree's id and the waiting entry's."""
    async with eidetica.open_instance(directory) as inst:
        tree = await inst.create_tree(name="t")
        await tree.grant(b_inst.public_key, "write")
        async with tree.transaction() as op:
            op.doc("d").set("synced", True)
        await b_inst.import_entries(await tree.entries())  # what its last sync gave b
        synced_tips = await tree.tips()
        async with tree.transaction() as op:  # its push failed
            op.doc("d").set("waiting", True)
        (pending,) = await tree.tips()
        await write_previous_sync_tree(
            inst,
            b_inst.public_key,
            b_address,
            tree=tree.root_id,
            synced_tips=synced_tips,
            pending=pending,
        )
    return tree.root_id, pending


async def test_a_node_upgraded_from_the_previous_sync_tree_keeps_peers_relationships_and_retries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A SQLite node whose sync tree an earlier version wrote (cursors, metadata,
    history and retries as signed entries) starts the engine with its peer away: the
    peer and its relationship are known (as down), and the waiting push is in the
    retry queue with its earlier attempts counted. Once the peer is back the retry is
    pushed and taken (the sync on reconnecting may carry the entry first), the tree
    syncs both ways, and the metadata and history go on from what they were. A retry
    delivered before the upgrade does not come back, and nothing is copied over a
    second time."""
    network = SimNetwork()
    directory = tmp_path / "a"
    config = SyncConfig(periodic_sync=10_000)  # no timer does the work of the retry
    with trio.fail_after(3600):
        async with (
            eidetica.open_instance(None) as b_inst,
            open_sync(b_inst, network=network, name="b") as b_sync,
        ):
            b_address = await b_sync.start_server("sim://b")
            peer_b = b_inst.public_key
            tree_id, pending = await previous_version_node(directory, b_inst, b_address)
            assert b_inst.backend.get(pending) is None

            network.partition("a", "b")  # b is away when a starts again
            async with (
                eidetica.open_instance(directory) as a_inst,
                a_inst.sync(network=network, name="a", config=config) as a_sync,
            ):
                await trio.testing.wait_all_tasks_blocked()
                status = await a_sync.status()
                assert list(status.down) == [peer_b]
                assert (status.down[peer_b].dial, status.down[peer_b].trees) == (
                    b_address,
                    [tree_id],
                )
                (restored,) = status.retries  # the delivered one did not come back
                assert (restored.peer, restored.tree) == (peer_b, tree_id)
                assert restored.attempts > 2  # its two failures count, and this one

                network.heal_all()
                await stored(b_inst, pending)
                await trio.sleep(2 * 64)  # the retry is due again by then
                status = await a_sync.status()
                assert status.retries == []
                assert status.peers[peer_b].address == b_address
                assert status.peers[peer_b].trees == [tree_id]
                state = await SyncState.open(a_inst)
                assert await state.retries() == {}
                metadata = await state.metadata(peer_b)
                assert (metadata.pushes, metadata.entries_pushed) == (1, 1)  # by the retry
                assert metadata.successful_sync_count >= 2  # the earlier one, and since
                assert metadata.total_entries_synced >= 3
                history = await state.history()
                assert history[0] == HistoryRecord(peer_b, True, 3, 12.0)
                assert ("push", tree_id) in [(h.direction, h.tree) for h in history]

                tree = await a_inst.open_tree(tree_id)
                theirs = await b_inst.open_tree(tree.root_id)
                async with theirs.transaction() as op:
                    op.doc("d").set("from_b", True)
                await a_sync.sync_with_peer(peer_b)  # the relationship syncs: pulled
                assert (await tree.doc("d")).get("from_b") is True
                committed = trio.current_time()
                async with tree.transaction() as op:
                    op.doc("d").set("from_a", True)
                (latest,) = await tree.tips()
                await stored(b_inst, latest)  # and pushed at once, with no timer
                assert trio.current_time() - committed < 1

            async with eidetica.open_instance(directory) as a_inst:  # copied once only
                assert await (await SyncState.open(a_inst)).retries() == {}


async def test_retries_due_together_beyond_the_peer_inbox_are_all_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pushes refused by an open breaker wait for it to close, so they all fall due at
    the same moment. More of them than the peer's inbox holds must each still be
    delivered (or wait again), and the persisted queue must end as empty as the live
    one: a record left behind would be pushed again after every restart."""
    network = SimNetwork()
    config = SyncConfig(
        peer_inbox_size=4,
        breaker=BreakerConfig(failure_threshold=2, cooldown=60),
        periodic_sync=10_000,
        connection_check=10_000,
    )
    pending = 12
    with trio.fail_after(3600):
        async with cut_off_pair(network, config) as (a_inst, a_sync, b_inst, tree, peer_b):
            for n in range(pending):  # one at a time: no commit's push finds the inbox full
                async with tree.transaction() as op:
                    op.doc("d").set("n", n)
                await trio.testing.wait_all_tasks_blocked()
            assert len((await a_sync.status()).retries) == pending
            network.heal_all()
            await trio.sleep(60 + 2 * 64)  # the breaker closes; every retry is due by then
            status = await a_sync.status()
            assert status.retries == []
            assert status.retries_dropped == 0
            theirs = await b_inst.open_tree(tree.root_id)
            assert await theirs.tips() == await tree.tips()
            assert await (await SyncState.open(a_inst)).retries() == {}
            assert status.peers[peer_b].pushes == pending  # each by its own retry
