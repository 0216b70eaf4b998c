"""A node restarted from SQLite knows its peers, relationships, retries and cursors."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

import eidetica
from eidetica.actors.state import SyncState
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork


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


async def test_a_push_that_used_up_its_attempts_leaves_no_record(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The persisted retry queue is a faithful copy of the live one: what the retry
    actor drops is dropped on disk as well."""
    network = SimNetwork()
    config = SyncConfig(max_retries=2, periodic_sync=10_000, connection_check=10_000)
    with trio.fail_after(3600):
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
            async with tree.transaction() as op:  # its push fails, and fails again
                op.doc("d").set("never", True)
            await trio.sleep(600)
            assert (await a_sync.status()).retries_dropped == 1
            assert await (await SyncState.open(a_inst)).retries() == {}
