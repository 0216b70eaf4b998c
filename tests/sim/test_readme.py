"""The README's sync example, run as written."""

from __future__ import annotations

import trio
import trio.testing

import eidetica


async def test_readme_sync_example(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with eidetica.open_instance(None) as inst, eidetica.open_instance(None) as other:
            tree = await inst.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("milk", {"done": False})
            async with inst.sync() as sync, other.sync() as other_sync:
                addr = await sync.start_server("sim://notes-host")
                await tree.grant(other.public_key, "write")
                host = await other_sync.connect(addr)
                await other_sync.add_tree_sync(host, tree.root_id)
                await other_sync.sync_with_peer(host)
                copy = await other.open_tree(tree.root_id)
                assert (await copy.doc("todo")).get("milk") == {"done": False}
                async with copy.transaction() as op:
                    op.doc("todo").set("milk.done", True)
                await trio.testing.wait_all_tasks_blocked()
                assert (await tree.doc("todo")).get("milk") == {"done": True}  # pushed


async def test_readme_hub_example(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with eidetica.open_instance(None) as inst, eidetica.open_instance(None) as other:
            tree_of_the_client = await other.create_tree(name="mine")
            async with inst.sync(accept_trees="any") as hub:
                addr = await hub.start_server("sim://hub")
                async with other.sync() as client:
                    hub_key = await client.connect(addr)
                    await tree_of_the_client.grant(hub_key, "read")
                    await client.add_tree_sync(hub_key, tree_of_the_client.root_id)
                    await client.sync_with_peer(hub_key)
                    kept = await inst.open_tree(tree_of_the_client.root_id)
                    assert await kept.tips() == await tree_of_the_client.tips()


async def test_readme_events_example(autojump_clock: trio.testing.MockClock) -> None:
    said: list[str] = []
    with trio.fail_after(60):
        async with eidetica.open_instance(None) as inst, eidetica.open_instance(None) as other:
            tree = await inst.create_tree(name="notes")
            async with inst.sync() as sync, other.sync() as other_sync:
                addr = await sync.start_server("sim://notes-host")
                await tree.grant(other.public_key, "write")
                host = await other_sync.connect(addr)
                await other_sync.add_tree_sync(host, tree.root_id)
                # As the README has it, with print as said.append:
                async with other_sync.events() as events:
                    await other_sync.wait_synced(host, tree.root_id)
                    async for event in events:
                        if isinstance(event, eidetica.events.SyncFinished):
                            said.append(f"{event.received} entries from {event.peer}")
                            break
                copy = await other.open_tree(tree.root_id)
                changes = tree.changes()
                async with copy.transaction() as op:
                    op.doc("todo").set("milk", True)
                async for change in changes:
                    said.append(f"tips now {change.tips}")
                    break
                assert change.tips == tuple(await copy.tips())
    assert said[0] == f"2 entries from {host}"  # the root and the grant
