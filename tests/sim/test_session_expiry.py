"""Sessions end a day after their handshake however busy they are, and the engine
proves its key again when a node says its session is gone, without its caller
noticing."""

from __future__ import annotations

import trio
import trio.testing

from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.sim import SimNetwork
from tests.sim.test_sync_engine import cluster


async def test_a_session_in_use_lapses_at_its_lifetime_and_the_engine_handshakes_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(session_idle=3600, session_lifetime=100)
    config = SyncConfig(periodic_sync=10_000, connection_check=10_000, limits=limits)
    with trio.fail_after(600):
        async with cluster(2, SimNetwork(), config) as (a, b):
            tree = await a.inst.create_tree(name="t")
            await tree.grant(b.inst.public_key, "read")
            peer_a = await b.sync.connect(a.address)
            await b.sync.add_tree_sync(peer_a, tree.root_id)
            await b.sync.sync_with_peer(peer_a)
            refused = []
            for value in range(3):  # used every 40 s: never idle, lapsed at 100 s
                await trio.sleep(40)
                async with tree.transaction() as op:
                    op.doc("todo").set("step", value)
                await b.sync.sync_with_peer(peer_a)
                theirs = await b.inst.open_tree(tree.root_id)
                assert await theirs.tips() == await tree.tips()
                refused.append((await a.sync.status()).refused_requests)
            assert refused == [0, 0, 1]  # at 120 s: refused once, then proven again
