"""A node cut off for hours catches up by itself once healed: pushes whose retries
were dropped after the maximum still arrive, by the periodic sync.

For the first hour every request is lost (the link stays up, so each push fails and
is retried until the retry queue gives it up); then the two are partitioned for the
rest of six hours; then everything heals."""

from __future__ import annotations

import trio
import trio.testing

import eidetica
import eidetica.events as news
from eidetica.actors.config import SyncConfig
from eidetica.actors.transports.sim import SimNetwork
from tests.waiting import settle

CONFIG = SyncConfig(periodic_sync=300.0, connection_check=60.0, redial_max=60.0)
HOURS = 6


async def test_six_hours_apart_then_healed_the_node_catches_up_by_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(seed=6)
    with trio.fail_after(HOURS * 3600 + 3600):
        async with (
            eidetica.open_instance(None) as writer,
            eidetica.open_instance(None) as away,
            writer.sync(network=network, name="writer", config=CONFIG) as writer_sync,
            away.sync(network=network, name="away", config=CONFIG) as away_sync,
            writer_sync.events() as events,
            trio.open_nursery() as nursery,
        ):
            dropped: list[news.RetryDropped] = []

            async def note_dropped() -> None:
                async for event in events:
                    if isinstance(event, news.RetryDropped):
                        dropped.append(event)

            nursery.start_soon(note_dropped)
            tree = await writer.create_tree(name="log")
            await tree.grant(away.public_key, "read")
            address = await writer_sync.start_server("sim://writer")
            writer_key = await away_sync.connect(address)
            await away_sync.add_peer(writer_key, address)  # kept: redialled after the cut
            await away_sync.add_tree_sync(writer_key, tree.root_id)
            await away_sync.start_server("sim://away")
            await writer_sync.add_peer(away.public_key, "sim://away")  # pushes go to it
            await writer_sync.add_tree_sync(away.public_key, tree.root_id)
            await away_sync.wait_synced(writer_key, tree.root_id)
            copy_tree = await away.open_tree(tree.root_id)

            network.drop(1.0)
            began = trio.current_time()
            written = 0
            while trio.current_time() - began < HOURS * 3600:
                if trio.current_time() - began >= 3600:
                    network.partition("writer", "away")
                async with tree.transaction() as op:
                    op.doc("log").set(f"at{written}", trio.current_time())
                written += 1
                await trio.sleep(600)  # a commit every ten minutes, for six hours
            assert dropped, "a push to the node away outlived the retry maximum"

            healed = trio.current_time()
            network.heal_all()
            network.drop(0.0)
            await settle(tree, copy_tree)
            caught_up = trio.current_time() - healed
            assert len((await copy_tree.doc("log")).to_dict()) == written == HOURS * 6
            assert caught_up <= CONFIG.periodic_sync + CONFIG.redial_max
            nursery.cancel_scope.cancel()
