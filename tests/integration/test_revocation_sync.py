"""Remove wins between real nodes: a writer demoted to read and an admin demoted to
read build on the parents they knew before their demotion and push over a real
WebSocket; nothing of theirs counts at the owner's node (which knew of the demotion
first) nor at their own (which learns of it afterwards), and the owner keeps admin."""

from __future__ import annotations

from pathlib import Path

import trio

import eidetica
from tests.nodes import WsNode, ws_node

ANY_PORT = "ws://127.0.0.1:0"


async def linked(owner: WsNode, other: WsNode, permission: str) -> tuple[eidetica.Tree, str]:
    """A tree of ``owner``'s that ``other`` may use with ``permission``, synced to
    ``other``, which pushes its commits to the owner from now on."""
    tree = await owner.inst.create_tree(name="shared")
    await tree.grant(other.inst.public_key, permission)
    host = await other.sync.connect(await owner.sync.start_server(ANY_PORT))
    await other.sync.add_tree_sync(host, tree.root_id)
    await other.sync.sync_with_peer(host)
    return tree, host


async def nothing_of_theirs_counts(
    tree: eidetica.Tree, owner: WsNode, other: WsNode, host: str
) -> eidetica.Tree:
    """Once ``other`` has pulled everything (and so learnt of its demotion to read),
    both nodes read the same: the owner's settings, and nothing in document ``d``.
    Returns ``other``'s copy of the tree."""
    await other.sync.sync_with_peer(host)
    theirs = await other.inst.open_tree(tree.root_id)
    for copy in (tree, theirs):
        assert (await copy.doc("d")).to_dict() == {}
        assert (await copy.settings())["auth"] == {
            owner.inst.public_key: "admin",
            other.inst.public_key: "read",
        }
    return theirs


async def test_a_revoked_writer_s_pushes_count_nowhere(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ws_node(tmp_path / "o") as owner, ws_node(tmp_path / "m") as mallory:
            tree, host = await linked(owner, mallory, "write")
            await tree.grant(mallory.inst.public_key, "read")  # mallory is not told
            theirs = await mallory.inst.open_tree(tree.root_id)
            async with theirs.transaction() as op:
                op.doc("d").set("after revocation", True)
            await mallory.sync.sync_with_peer(host)

            await nothing_of_theirs_counts(tree, owner, mallory, host)
            # the owner's node refused the entry; mallory's keeps it, saying why
            assert await tree.voided() == {}
            [reason] = (await theirs.voided()).values()
            assert reason.endswith("does not build on")


async def test_a_demoted_admin_s_settings_count_nowhere(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            ws_node(tmp_path / "o") as owner,
            ws_node(tmp_path / "m") as mallory,
            eidetica.open_instance(None) as friend,
        ):
            tree, host = await linked(owner, mallory, "admin")
            await tree.grant(mallory.inst.public_key, "read")  # mallory is not told
            theirs = await mallory.inst.open_tree(tree.root_id)
            await theirs.grant(mallory.inst.public_key, "admin")  # a no-op where it signs
            await theirs.grant(friend.public_key, "admin")
            async with theirs.transaction() as op:
                op.doc("d").set("by the demoted admin", True)
            await mallory.sync.sync_with_peer(host)

            await nothing_of_theirs_counts(tree, owner, mallory, host)
            assert len(await theirs.voided()) == 3
            await tree.grant(friend.public_key, "write")  # the owner still governs
