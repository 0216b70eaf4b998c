"""Nodes holding the same entries read the same documents, however they got them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.protocol.entry import Entry
from eidetica.storage import docstate
from tests.builders import topological_order

NODES = 3


@dataclass(frozen=True)
class Write:
    node: int
    store: str
    path: str
    value: int | None  # None deletes


@dataclass(frozen=True)
class Share:
    source: int
    target: int


steps = st.lists(
    st.one_of(
        st.builds(
            Write,
            st.integers(0, NODES - 1),
            st.sampled_from(["s", "t"]),
            st.sampled_from(["a", "a.b", "a.c", "b"]),
            st.none() | st.integers(0, 9),
        ),
        st.builds(Share, st.integers(0, NODES - 1), st.integers(0, NODES - 1)),
    ),
    max_size=25,
)


async def share(source: eidetica.Tree, target: eidetica.Tree) -> None:
    await target.instance.import_entries(await source.entries())


async def read_all(tree: eidetica.Tree) -> dict[str, object]:
    return {name: (await tree.doc(name)).to_dict() for name in ("s", "t")}


async def fold_fresh(entries: list[Entry], order_seed: int, root_id: str) -> dict[str, object]:
    """The documents a new node reads after receiving ``entries`` one at a time, in a
    random parents-first order, reading after some arrivals so caches must catch up."""
    rng = random.Random(order_seed)
    async with eidetica.open_instance(None) as fresh:
        for entry in topological_order(entries, rng):
            await fresh.import_entries([entry])
            if entry.tree is not None and rng.random() < 0.5:
                await read_all(await fresh.open_tree(root_id))
        return await read_all(await fresh.open_tree(root_id))


@settings(max_examples=60, deadline=None)
@given(script=steps, order_seed=st.integers(0, 2**32))
async def test_concurrent_writers_converge(script: list[Write | Share], order_seed: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(docstate, "CHECKPOINT_EVERY", 2)  # exercise rewinds to checkpoints
        await run_script(script, order_seed)


async def run_script(script: list[Write | Share], order_seed: int) -> None:
    async with (
        eidetica.open_instance(None) as a,
        eidetica.open_instance(None) as b,
        eidetica.open_instance(None) as c,
    ):
        origin = await a.create_tree(name="shared")
        for other in (b, c):
            await origin.grant(other.public_key, "write")
        trees = [origin]
        for other in (b, c):
            await other.import_entries(await origin.entries())
            trees.append(await other.open_tree(origin.root_id))
        for step in script:
            match step:
                case Write(node, store, path, value):
                    async with trees[node].transaction() as op:
                        if value is None:
                            op.doc(store).delete(path)
                        else:
                            op.doc(store).set(path, value)
                    await read_all(trees[node])  # keep the node's caches warm
                case Share(source, target):
                    await share(trees[source], trees[target])
                    await read_all(trees[target])
        for giver in trees:  # everyone gets everything
            for taker in trees:
                await share(giver, taker)
        tips = {tuple(await tree.tips()) for tree in trees}
        states = [await read_all(tree) for tree in trees]
        assert len(tips) == 1
        assert states[0] == states[1] == states[2]
        entries = await origin.entries()
        assert await fold_fresh(entries, order_seed, origin.root_id) == states[0]


async def test_forks_that_each_create_a_store_merge() -> None:
    async with eidetica.open_instance(None) as a, eidetica.open_instance(None) as b:
        tree = await a.create_tree(name="t")
        await tree.grant(b.public_key, "write")
        await b.import_entries(await tree.entries())
        theirs = await b.open_tree(tree.root_id)
        async with tree.transaction() as op:
            op.doc("new").set("from_a", 1)
        async with theirs.transaction() as op:
            op.doc("new").set("from_b", 2)
        await b.import_entries(await tree.entries())
        await a.import_entries(await theirs.entries())
        expected = {"from_a": 1, "from_b": 2}
        assert (await tree.doc("new")).to_dict() == expected
        assert (await theirs.doc("new")).to_dict() == expected
        assert len(await tree.tips()) == 2
        async with tree.transaction() as op:  # the next commit merges the two tips
            op.doc("new").set("merged", True)
        assert op.entry is not None and len(op.entry.parents) == 2
        assert len(op.entry.stores[0].parents) == 2
