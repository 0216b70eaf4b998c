"""Over sim, as over WebSocket, one link carries requests both ways: a node that was
dialled knows its dialler as a peer and pushes to it over the dialler's own link,
though the dialler listens nowhere."""

from __future__ import annotations

import trio
import trio.testing

import eidetica
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork


async def test_a_dialled_node_knows_its_dialler_and_pushes_commits_back_over_its_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(60):
        async with (
            eidetica.open_instance(None) as host_inst,
            eidetica.open_instance(None) as dialler_inst,
            open_sync(host_inst, network=network, name="host") as host,
            open_sync(dialler_inst, network=network, name="dialler") as dialler,
        ):
            tree = await host_inst.create_tree(name="notes")
            await tree.grant(dialler_inst.public_key, "write")
            host_key = await dialler.connect(await host.start_server("sim://host"))
            await dialler.add_tree_sync(host_key, tree.root_id)
            await trio.testing.wait_all_tasks_blocked()

            peers = (await host.status()).peers
            assert list(peers) == [dialler_inst.public_key]
            assert str(peers[dialler_inst.public_key].address).startswith("sim-in://")
            assert peers[dialler_inst.public_key].dial is None  # it listens nowhere
            await host.add_tree_sync(dialler_inst.public_key, tree.root_id)

            async with tree.transaction() as op:
                op.doc("todo").set("milk", "pushed")
            await trio.testing.wait_all_tasks_blocked()
            copy = await dialler_inst.open_tree(tree.root_id)
            assert (await copy.doc("todo")).get("milk") == "pushed"
            assert await copy.tips() == await tree.tips()
            assert trio.current_time() < 1  # pushed at once: no timer, no sync call
            assert (await dialler.status()).servers == []
