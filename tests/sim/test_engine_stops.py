"""The engine never leaves a caller waiting, and its breaker and dialling recover."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors import peer as peer_module
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.errors import SyncError
from tests.sim.test_sync_engine import cluster, share


async def test_callers_in_flight_get_an_error_when_the_engine_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(600):
        async with cluster(2, network) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            network.delay(5.0)
            outcomes: dict[str, str] = {}

            async def call(name: str, delay: float, work: object) -> None:
                await trio.sleep(delay)
                try:
                    await work  # type: ignore[misc]
                    outcomes[name] = "returned"
                except SyncError:
                    outcomes[name] = "SyncError"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "connect", 0, a.sync.connect(b.address))
                nursery.start_soon(call, "running sync", 0, a.sync.sync_with_peer(peer_b))
                nursery.start_soon(call, "queued sync", 0.1, a.sync.sync_with_peer(peer_b))
                await trio.sleep(1)
                await a.sync.shutdown()
            assert outcomes == dict.fromkeys(
                ["connect", "running sync", "queued sync"], "SyncError"
            )


async def test_a_peer_actor_left_down_fails_jobs_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SyncConfig(max_restarts=1)
    with trio.fail_after(600):
        async with cluster(2, SimNetwork(), config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)

            async def always_crash(*args: object) -> None:
                raise RuntimeError("bug")

            monkeypatch.setattr(peer_module.PeerActor, "_run", always_crash)
            for _ in range(2):
                with pytest.raises(SyncError, match="crashed"):
                    await a.sync.sync_with_peer(peer_b)
                await trio.sleep(10)
            assert (await a.sync.status()).crashed == [f"peer {peer_b}"]
            with pytest.raises(SyncError, match="down"):
                await a.sync.sync_with_peer(peer_b)


async def test_the_breaker_closes_again_under_steady_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    config = SyncConfig(
        breaker=BreakerConfig(failure_threshold=2, cooldown=60),
        periodic_sync=100_000,
        connection_check=100_000,
    )
    with trio.fail_after(3600):
        async with cluster(2, network, config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            network.partition("n0", "n1")
            for i in range(40):  # a commit every 30 s, more often than the cooldown
                if i == 4:
                    network.heal_all()
                async with tree.transaction() as op:
                    op.doc("d").set(f"k{i}", i)
                await trio.sleep(30)
            status = (await a.sync.status()).peers[peer_b]
            assert status.breaker == "closed"
            theirs = await b.inst.open_tree(tree.root_id)
            assert len((await theirs.doc("d")).to_dict()) == 40


async def test_a_peer_offline_at_restart_is_dialled_again_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    network = SimNetwork()
    directory = tmp_path / "a"
    with trio.fail_after(3600):
        async with eidetica.open_instance(None) as b_inst:
            async with eidetica.open_instance(directory) as a_inst:
                tree = await a_inst.create_tree(name="t")
                await tree.grant(b_inst.public_key, "write")
                async with open_sync(b_inst, network=network, name="b") as b_sync:
                    b_address = await b_sync.start_server("sim://b")
                    async with open_sync(a_inst, network=network, name="a") as a_sync:
                        peer_b = await a_sync.connect(b_address)
                        await a_sync.add_tree_sync(peer_b, tree.root_id)
            # B is offline when A restarts; it comes back a little later.
            async with (
                eidetica.open_instance(directory) as a_inst,
                open_sync(a_inst, network=network, name="a") as a_sync,
            ):
                assert list((await a_sync.status()).down) == [peer_b]
                assert (await a_sync.status()).peers[peer_b].state == "dialling"
                async with open_sync(b_inst, network=network, name="b") as b_sync:
                    await b_sync.start_server("sim://b")
                    await trio.sleep(61)  # redialled with backoff meanwhile
                    status = await a_sync.status()
                    assert list(status.peers) == [peer_b] and status.down == {}
                    assert status.peers[peer_b].trees == [tree.root_id]


async def push_at_hand_when_leaving(delay: float, grace: float) -> tuple[float, object]:
    """Leave a's block while a push to b takes ``delay`` seconds; how long leaving took
    and what b holds afterwards."""
    network = SimNetwork()
    async with (
        eidetica.open_instance(None) as b_inst,
        eidetica.open_instance(None) as a_inst,
        open_sync(b_inst, network=network, name="b", accept_trees="any") as b_sync,
    ):
        b_at = await b_sync.start_server("sim://b")
        tree = await a_inst.create_tree(name="t")
        await tree.grant(b_inst.public_key, "write")
        config = SyncConfig(shutdown_grace=grace, periodic_sync=10_000)
        async with open_sync(a_inst, network=network, name="a", config=config) as a_sync:
            peer_b = await a_sync.connect(b_at)
            await a_sync.add_tree_sync(peer_b, tree.root_id)
            await a_sync.sync_with_peer(peer_b)  # b takes the tree in
            network.delay(delay)
            async with tree.transaction() as op:
                op.doc("d").set("k", 1)
            await trio.sleep(0.1)  # the push is on its way when a stops
            left = trio.current_time()
        took = trio.current_time() - left
        theirs = await b_inst.open_tree(tree.root_id)
        return took, (await theirs.doc("d")).get("k")


async def test_leaving_the_block_lets_the_job_at_hand_finish_within_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        took, held = await push_at_hand_when_leaving(delay=2.0, grace=5.0)
    assert held == 1  # the push finished before the engine stopped
    assert took < 5.0


async def test_a_job_longer_than_the_grace_is_cancelled_at_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        took, held = await push_at_hand_when_leaving(delay=30.0, grace=5.0)
    assert held is None  # cancelled: never arrived
    assert took == pytest.approx(5.0, abs=0.2)


async def test_removing_a_peer_during_its_sync_answers_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(600):
        async with cluster(2, network) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            network.delay(30.0)
            outcome: list[BaseException] = []

            async def sync() -> None:
                try:
                    await a.sync.sync_with_peer(peer_b)
                except SyncError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync)
                await trio.sleep(1)  # the sync is at hand
                await a.sync.remove_peer(peer_b)
            assert "stopped" in str(outcome[0])


async def test_a_push_to_a_peer_whose_actor_was_left_down_is_dropped_in_the_end(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its retries spend their attempts (no endless deferral to a closed inbox)."""
    config = SyncConfig(max_restarts=0, periodic_sync=100_000, connection_check=100_000)
    network = SimNetwork()
    with trio.fail_after(6000):
        async with cluster(2, network, config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            network.drop(1.0)  # the next push is lost: it goes to the retry queue
            async with tree.transaction() as op:
                op.doc("d").set("k", 1)
            await trio.sleep(11)  # past the sim network's timeout
            assert len((await a.sync.status()).retries) == 1
            network.drop(0.0)

            async def always_crash(*args: object) -> None:
                raise RuntimeError("bug")

            monkeypatch.setattr(peer_module.PeerActor, "_run", always_crash)
            with pytest.raises(SyncError):
                await a.sync.sync_with_peer(peer_b)  # its one crash: left down
            await trio.sleep(600)
            status = await a.sync.status()
            assert status.crashed == [f"peer {peer_b}"]
            assert (status.retries, status.retries_dropped) == ([], 1)


async def test_draining_runs_the_job_at_hand_only_and_fails_the_queued_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten pushes are queued behind a slow one when a stops: only the one at hand
    runs (2 s), not all of them (20 s), well within the 60 s grace."""
    network = SimNetwork()
    config = SyncConfig(shutdown_grace=60, periodic_sync=10_000)
    with trio.fail_after(600):
        async with (
            eidetica.open_instance(None) as b_inst,
            eidetica.open_instance(None) as a_inst,
            open_sync(b_inst, network=network, name="b", accept_trees="any") as b_sync,
        ):
            b_at = await b_sync.start_server("sim://b")
            tree = await a_inst.create_tree(name="t")
            await tree.grant(b_inst.public_key, "write")
            async with open_sync(a_inst, network=network, name="a", config=config) as a_sync:
                peer_b = await a_sync.connect(b_at)
                await a_sync.add_tree_sync(peer_b, tree.root_id)
                await a_sync.sync_with_peer(peer_b)
                network.delay(2.0)
                for n in range(10):
                    async with tree.transaction() as op:
                        op.doc("d").set(f"k{n}", n)
                await trio.sleep(0.1)  # the first push is at hand, nine wait
                left = trio.current_time()
            assert trio.current_time() - left < 5
