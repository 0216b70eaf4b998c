"""Remove wins in every order: random grant, revoke and write histories by several keys,
delivered to fresh nodes in random orders and batches, read the same everywhere."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.errors import InvalidEntry
from eidetica.protocol.entry import Entry
from tests.builders import topological_order

EXAMPLES = int(os.environ.get("EIDETICA_REVOCATION_EXAMPLES", "200"))
ACTORS = 4  # 0 owns the tree; 1 and 2 start as admins, 3 as a writer
LEVELS = ["read", "write", "admin", None, None]  # None revokes


@dataclass(frozen=True)
class Write:
    actor: int
    path: str
    value: int


@dataclass(frozen=True)
class Grant:
    actor: int
    target: int
    level: str | None


@dataclass(frozen=True)
class Race:
    """``actor`` lowers ``target`` while ``target``, not told yet, writes and grants."""

    actor: int
    target: int
    level: str | None


@dataclass(frozen=True)
class Share:
    source: int
    target: int


actors = st.integers(0, ACTORS - 1)
steps = st.lists(
    st.one_of(
        st.builds(Write, actors, st.sampled_from(["a", "b", "c"]), st.integers(0, 9)),
        st.builds(Grant, actors, actors, st.sampled_from(LEVELS)),
        st.builds(Write, actors, st.sampled_from(["a", "b", "c"]), st.integers(0, 9)),
        st.builds(Share, actors, actors),
        st.builds(Race, actors, actors, st.sampled_from(["read", None])),
    ),
    max_size=40,
)


Step = Write | Grant | Race | Share


async def act(step: Step, trees: list[eidetica.Tree], keys: list[str]) -> None:
    """Run one step on its actor's own node; a step its actor may not take is skipped."""
    try:
        match step:
            case Write(actor, path, value):
                async with trees[actor].transaction() as op:
                    op.doc("d").set(path, value)
            case Grant(actor, target, None):
                await trees[actor].revoke(keys[target])
            case Grant(actor, target, str() as level):
                await trees[actor].grant(keys[target], level)
            case Race(actor, target, level):
                await act(Grant(actor, target, level), trees, keys)
                await act(Write(target, "race", actor), trees, keys)
                await act(Grant(target, (target + 1) % ACTORS, "write"), trees, keys)
            case Share(source, target):
                entries = await trees[source].entries()
                await trees[target].instance.receive(trees[0].root_id, [e.raw for e in entries])
    except InvalidEntry:
        pass


View = tuple[dict[str, Any], dict[str, Any], set[str]]


async def observe(entries: list[Entry], root_id: str, seed: int) -> View:
    """What a new node reads after receiving ``entries`` in a random parents-first order
    and random batches, then offered all of them again until nothing more is stored
    (as later syncs would)."""
    rng = random.Random(seed)
    order = topological_order(entries, rng)
    async with eidetica.open_instance(None) as node:
        while order:
            size = rng.randint(1, 4)
            batch, order = order[:size], order[size:]
            await node.receive(root_id, [e.raw for e in batch])
        for _ in range(len(entries)):
            receipt = await node.receive(root_id, [e.raw for e in entries])
            if not receipt.stored:
                break
        tree = await node.open_tree(root_id)
        voided = await tree.voided()
        counted = {e.id for e in await tree.entries()} - set(voided)
        return (await tree.doc("d")).to_dict(), await tree.settings(), counted


@settings(max_examples=EXAMPLES, deadline=None)
async def history(script: list[Step]) -> list[Entry]:
    """The entries of a tree that four nodes wrote, granted and revoked in by ``script``,
    parents first."""
    async with (
        eidetica.open_instance(None) as n0,
        eidetica.open_instance(None) as n1,
        eidetica.open_instance(None) as n2,
        eidetica.open_instance(None) as n3,
    ):
        nodes = [n0, n1, n2, n3]
        root = await n0.create_tree(name="t")
        root_entry = (await root.entries())[0]
        for node in nodes[1:]:
            await node.import_entries([root_entry])
        trees = [await node.open_tree(root.root_id) for node in nodes]
        keys = [node.public_key for node in nodes]
        for target, level in ((1, "admin"), (2, "admin"), (3, "write")):
            await root.grant(keys[target], level)
        for target in range(1, ACTORS):
            await act(Share(0, target), trees, keys)
        for step in script:
            await act(step, trees, keys)
        union = {e.id: e for tree in trees for e in await tree.entries()}
        return sorted(union.values(), key=lambda e: e.key)


@given(script=steps, seeds=st.lists(st.integers(0, 2**32), min_size=3, max_size=3))
async def test_random_histories_read_the_same_on_every_node(
    script: list[Step], seeds: list[int]
) -> None:
    union = await history(script)
    root_id, owner = union[0].id, union[0].author
    views = [await observe(union, root_id, seed) for seed in seeds]
    event(f"entries that do not count: {min(len(union) - len(views[0][2]), 3)}")
    assert views[1:] == views[:1] * (len(views) - 1)
    assert views[0][1]["auth"][owner] == "admin"  # the owner is never locked out
