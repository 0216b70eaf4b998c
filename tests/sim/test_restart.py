"""A node restarted from SQLite knows its peers, relationships, retries and cursors."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.engine.breaker import BreakerConfig
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
                    assert len((await a_sync.status())["retries"]) == 1
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
                assert status["peers"][peer_b]["trees"] == [tree.root_id]
                theirs = await b_inst.open_tree(tree.root_id)
                assert (await theirs.doc("d")).get("waiting") is True
                assert status["retries"] == []
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
            assert (await a_sync.status())["retries_dropped"] == 1
            assert await (await SyncState.open(a_inst)).retries() == {}


@pytest.mark.xfail(
    strict=True,
    reason="a retried push that finds the peer's inbox full is dropped there: neither"
    " delivered nor queued again, while its record stays on disk (issue 11, item 7)",
)
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
            for n in range(pending):  # one at a time: no commit's push finds the inbox full
                async with tree.transaction() as op:
                    op.doc("d").set("n", n)
                await trio.testing.wait_all_tasks_blocked()
            assert len((await a_sync.status())["retries"]) == pending
            network.heal_all()
            await trio.sleep(60 + 2 * 64)  # the breaker closes; every retry is due by then
            status = await a_sync.status()
            assert status["retries"] == []
            assert status["retries_dropped"] == 0
            theirs = await b_inst.open_tree(tree.root_id)
            assert await theirs.tips() == await tree.tips()
            assert await (await SyncState.open(a_inst)).retries() == {}
            assert status["peers"][peer_b]["pushes"] == pending  # each by its own retry
            assert status["peers"][peer_b]["dropped_jobs"] == 0
