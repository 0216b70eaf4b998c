"""The engine under faults: crashes, breakers, garbage, concurrency and shutdown."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors import peer as peer_module
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.link import Link
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork, SimTransport
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.entry import StoreWrite, create_entry
from eidetica.protocol.messages import Ack, ErrorReply, SendEntries, Summary, SyncRequest
from eidetica.storage.crdt import SetOp, encode_ops
from tests.sim.test_outage_cost import LocalWrites
from tests.sim.test_sync_engine import Node, cluster, link, share


async def test_a_crashing_peer_actor_is_restarted_and_others_never_notice(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(600):
        async with cluster(3, SimNetwork()) as (a, b, c):
            tree = await a.inst.create_tree(name="t")
            await tree.grant("*", "write")
            peer_b = await link(a, b, tree.root_id)
            peer_c = await link(a, c, tree.root_id)
            run = peer_module.PeerActor._run
            crashes = 0

            async def crash_once_for_b(
                actor: peer_module.PeerActor, link_: object, job: peer_module.Job
            ) -> None:
                nonlocal crashes
                if crashes == 0 and actor.key == peer_b:
                    crashes += 1
                    raise RuntimeError("bug in a peer actor")
                await run(actor, link_, job)  # type: ignore[arg-type]

            monkeypatch.setattr(peer_module.PeerActor, "_run", crash_once_for_b)
            with pytest.raises(eidetica.errors.SyncError, match="crashed"):
                await a.sync.sync_with_peer(peer_b)
            await a.sync.sync_with_peer(peer_c)  # the other peer never noticed
            await trio.sleep(5)  # past the restart backoff
            await a.sync.sync_with_peer(peer_b)  # restarted, and working again
            assert await (await b.inst.open_tree(tree.root_id)).tips() == await tree.tips()
            assert (await a.sync.status()).crashed == []


async def cut_off_until_the_breaker_opens(network: SimNetwork, a: Node, peer_b: str) -> None:
    """Lose every request and fail two syncs: enough for a threshold of two.

    The peer stops answering but its link stays open, so the peer (and its breaker)
    stays as it is; a partition would close the link, and a redial that succeeds
    makes a fresh peer with a closed breaker."""
    network.drop(1.0)
    for _ in range(2):
        with pytest.raises(eidetica.errors.TransportError):
            await a.sync.sync_with_peer(peer_b)


async def test_the_breaker_opens_then_probes_half_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    config = SyncConfig(
        breaker=BreakerConfig(failure_threshold=2, cooldown=60), connection_check=10_000
    )
    with trio.fail_after(600):
        async with cluster(2, network, config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await cut_off_until_the_breaker_opens(network, a, peer_b)
            assert (await a.sync.status()).peers[peer_b].breaker == "open"
            with pytest.raises(eidetica.errors.SyncError, match="breaker open"):
                await a.sync.sync_with_peer(peer_b)  # fails fast, nothing sent
            network.drop(0)
            await trio.sleep(61)
            assert (await a.sync.status()).peers[peer_b].breaker == "half-open"
            await a.sync.sync_with_peer(peer_b)  # the probe succeeds
            assert (await a.sync.status()).peers[peer_b].breaker == "closed"


async def test_garbage_gets_an_error_answer_and_the_node_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(60):
        async with cluster(2, network) as (a, b):
            stranger = SimTransport(network, name="stranger")
            for junk in [
                b"",
                b"\x00\x01garbage",
                MSGPACK.encode(ErrorReply(code="x", message="y")),
            ]:
                answer = MSGPACK.decode(await stranger.request(a.address, junk)).body
                assert isinstance(answer, ErrorReply)
            summary_less = MSGPACK.encode(
                SyncRequest(tree="0" * 64, tips=(), summary=_empty_summary())
            )
            answer = MSGPACK.decode(await stranger.request(a.address, summary_less)).body
            assert isinstance(answer, ErrorReply) and answer.code == "unauthenticated"
            assert (await a.sync.status()).refused_requests == 4  # 3 junk, 1 unauthenticated
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)  # everyone else is still served
            assert b.inst.backend.has([tree.root_id]) == {tree.root_id}


def _empty_summary() -> Summary:
    return Summary(min_height=0, hashes=1, salt=b"", bits=b"")


async def test_three_nodes_writing_concurrently_converge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(7)
    with trio.fail_after(3600):
        async with cluster(3, SimNetwork()) as nodes:
            a, b, c = nodes
            tree = await a.inst.create_tree(name="t")
            await tree.grant("*", "write")
            peer_b = await link(a, b, tree.root_id)
            peer_c = await link(a, c, tree.root_id)
            await link(b, c, tree.root_id)
            await a.sync.sync_with_peer(peer_b)
            await a.sync.sync_with_peer(peer_c)
            trees = [await node.inst.open_tree(tree.root_id) for node in nodes]

            async def writer(index: int) -> None:
                for step in range(10):
                    async with trees[index].transaction() as op:
                        op.doc("d").set(rng.choice(["x", "y", "z"]), f"{index}.{step}")
                    await trio.sleep(rng.random())

            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(writer, index)
            await trio.sleep(310)  # let pushes, retries and one periodic sync settle
            tips = [await t.tips() for t in trees]
            docs = [(await t.doc("d")).to_dict() for t in trees]
            assert tips[0] == tips[1] == tips[2]
            assert docs[0] == docs[1] == docs[2]
            assert len(await trees[0].entries()) == 1 + 1 + 30  # root, grant, writes


async def test_shutdown_under_load_leaves_no_task_and_no_torn_write(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    network = SimNetwork()
    with trio.fail_after(30):
        async with eidetica.open_instance(directory) as inst, eidetica.open_instance(None) as other:
            tree = await inst.create_tree(name="t")
            await tree.grant(other.public_key, "write")
            async with open_sync(other, network=network, name="o") as other_sync:
                address = await other_sync.start_server("sim://o")
                async with open_sync(inst, network=network, name="n") as sync:
                    peer = await sync.connect(address)
                    await sync.add_tree_sync(peer, tree.root_id)
                    back = await other_sync.connect(await sync.start_server("sim://n"))
                    await other_sync.add_tree_sync(back, tree.root_id)
                    for i in range(50):  # commits whose pushes are in flight at exit
                        async with tree.transaction() as op:
                            op.doc("d").set("n", i)
            tips = await tree.tips()
        async with eidetica.open_instance(directory) as reopened:
            again = await reopened.open_tree(tree.root_id)
            assert await again.tips() == tips
            assert (await again.doc("d")).get("n") == 49


async def test_duplicated_and_reordered_messages_still_converge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(seed=3)
    network.duplicate(0.5)
    network.delay(0.05, jitter=0.5)
    with trio.fail_after(3600):
        async with cluster(2, network) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await a.sync.sync_with_peer(peer_b)
            theirs = await b.inst.open_tree(tree.root_id)
            for i in range(20):
                async with (tree if i % 2 else theirs).transaction() as op:
                    op.doc("d").set(f"k{i}", i)
            await trio.sleep(400)
            assert await tree.tips() == await theirs.tips()
            assert (await tree.doc("d")).to_dict() == {f"k{i}": i for i in range(20)}
            assert network.duplicated > 0


async def test_an_unverifiable_pushed_entry_is_refused_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(60):
        async with cluster(2, network) as (a, b):
            tree = await a.inst.create_tree(name="t")
            await share(a, b, tree)
            entries = await tree.entries()
            root, tip = entries[0], entries[-1]
            tips = await tree.tips()
            async with eidetica.open_instance(None) as mallory:
                forged = create_entry(
                    mallory.device_key,
                    tree=root.id,
                    parents=[tip.id],
                    height=tip.height + 1,
                    stores=[StoreWrite("d", (), encode_ops([SetOp(("x",), "forged")]))],
                )
            link_ = Link(SimTransport(network, name="b"), a.address, MSGPACK)
            await link_.handshake(b.inst)
            ack = await link_.call(SendEntries(tree=root.id, entries=(forged.raw,)), Ack)
            assert (ack.stored, ack.rejected) == (0, 1)
            assert (await tree.doc("d")).get("x") is None
            assert await tree.tips() == tips


async def sync_tree_entries(node: eidetica.Instance, data_tree: str) -> int:
    """Entries of every tree but ``data_tree``: the node's own sync state."""
    trees = [t for t in await node.trees() if t.root_id != data_tree]
    return sum([len(await t.entries()) for t in trees])


async def test_pushes_to_a_peer_behind_an_open_breaker_wait_for_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a peer's breaker is open, a failed push waits for the breaker to close
    rather than coming back every two seconds, and each refusal counts toward the
    push's retry limit: two hours with the peer away cost a bounded number of writes
    of sync state, however many pushes are pending. Those writes are node-local
    records: the sync tree signs no entry for them."""
    network = SimNetwork()
    config = SyncConfig(
        breaker=BreakerConfig(failure_threshold=2, cooldown=60),
        connection_check=10_000,
        periodic_sync=10_000,
        max_retries=10,
    )
    pending = 40
    with trio.fail_after(3 * 3600):
        async with cluster(2, network, config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            peer_b = await share(a, b, tree)
            await cut_off_until_the_breaker_opens(network, a, peer_b)
            before = await sync_tree_entries(a.inst, tree.root_id)
            counted = LocalWrites(a.inst.backend, monkeypatch)
            for i in range(pending):
                async with tree.transaction() as op:
                    op.doc("d").set("n", i)
            await trio.sleep(2 * 3600)
            assert await sync_tree_entries(a.inst, tree.root_id) == before
            written = counted.writes["sync/retry"]
            # each failure writes a push's record once (at most max_retries + 1 of them),
            # and its end deletes it once
            assert written <= pending * (config.max_retries + 2), written
            assert (await a.sync.status()).retries_dropped == pending
