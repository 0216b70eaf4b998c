"""Dead entries: a revoked writer's node keeps its voided writes but stops offering
them, so it names the same sync tips as the nodes that refused them; a write that
counts and builds on them brings them back."""

from __future__ import annotations

import pytest

import eidetica
from eidetica.errors import EntryNotFound
from eidetica.storage.instance import Instance
from eidetica.storage.tree import Tree


async def _send(source: Instance, target: Instance, tree: str) -> list[str]:
    """Everything ``source`` offers of ``tree``, received by ``target``; the ids stored."""
    view = source.sync_view(tree)
    raws = view.raw(list(view.ids_from(0)))
    return (await target.receive(tree, raws)).stored


async def _revoked_after_writing(owner: Instance, writer: Instance) -> tuple[Tree, Tree, str]:
    """The owner's tree, the writer's copy, and the id of a write the writer made
    unaware that the owner revoked it at once."""
    tree = await owner.create_tree(name="t")
    await tree.grant(writer.public_key, "write")
    await _send(owner, writer, tree.root_id)
    mine = await writer.open_tree(tree.root_id)
    async with mine.transaction() as op:
        op.doc("doc").set("late", 1)
    assert op.entry is not None
    await tree.revoke(writer.public_key)
    return tree, mine, op.entry.id


async def test_a_revoked_writers_concurrent_writes_die_and_are_not_offered() -> None:
    async with eidetica.open_instance(None) as owner, eidetica.open_instance(None) as writer:
        tree, mine, late = await _revoked_after_writing(owner, writer)

        assert late not in await _send(writer, owner, tree.root_id)  # refused: voided
        await _send(owner, writer, tree.root_id)  # the writer learns of its revocation
        assert late in writer.voided(tree.root_id)

        assert writer.liveness.of(tree.root_id).dead == {late}
        assert writer.sync_tips(tree.root_id) == owner.sync_tips(tree.root_id)
        assert late in await mine.tips()  # still stored, and a tip of its own
        view = writer.sync_view(tree.root_id)
        assert late not in view.nodes([late]) and late not in set(view.ids_from(0))
        with pytest.raises(EntryNotFound):
            view.raw([late])


async def test_a_write_that_counts_brings_dead_entries_back() -> None:
    async with eidetica.open_instance(None) as owner, eidetica.open_instance(None) as writer:
        tree, mine, late = await _revoked_after_writing(owner, writer)
        await tree.grant(writer.public_key, "write")  # and back again
        await _send(owner, writer, tree.root_id)
        assert writer.liveness.of(tree.root_id).dead == {late}

        async with mine.transaction() as op:  # builds on every tip, the dead one too
            op.doc("doc").set("after", 2)
        assert op.entry is not None and late in op.entry.parents
        assert writer.liveness.of(tree.root_id).dead == frozenset()
        stored = await _send(writer, owner, tree.root_id)
        assert {late, op.entry.id} <= set(stored)
        assert writer.sync_tips(tree.root_id) == owner.sync_tips(tree.root_id) == [op.entry.id]
