"""Builders of signed test DAGs that need no instance."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from hypothesis import strategies as st

from eidetica.protocol.entry import SETTINGS_STORE, Entry, StoreWrite, create_entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage.crdt import SetOp, encode_ops

STORE = "d"


def root_entry(key: SigningKey, name: str = "test", entropy: bytes | None = None) -> Entry:
    """A valid root entry naming ``key`` as admin (random entropy unless given)."""
    ops = [SetOp(("auth",), {key.public_key: "admin"}), SetOp(("name",), name)]
    return create_entry(
        key,
        tree=None,
        parents=(),
        height=0,
        stores=[StoreWrite(SETTINGS_STORE, (), encode_ops(ops))],
        entropy=os.urandom(16) if entropy is None else entropy,
    )


def child_entry(
    key: SigningKey, root: Entry, parents: Sequence[Entry], name: str, value: int
) -> Entry:
    """A valid entry on ``parents`` writing ``name = value`` to store ``d``, naming as
    store parents those of its parents that wrote ``d``."""
    store_parents = [p.id for p in parents if p.store(STORE) is not None]
    return create_entry(
        key,
        tree=root.id,
        parents=[p.id for p in parents],
        height=max(p.height for p in parents) + 1,
        stores=[StoreWrite(STORE, tuple(store_parents), encode_ops([SetOp((name,), value)]))],
    )


def settings_on_root(key: SigningKey, root: Entry, ops: Sequence[SetOp]) -> Entry:
    """A settings entry signed by ``key`` right on ``root`` (height 1), whether or not
    ``key`` may write one there: for tests of what a tree takes in."""
    return create_entry(
        key,
        tree=root.id,
        parents=[root.id],
        height=1,
        stores=[StoreWrite(SETTINGS_STORE, (root.id,), encode_ops(list(ops)))],
    )


def build_dag(key: SigningKey, shape: Sequence[Sequence[int]]) -> list[Entry]:
    """A root followed by one entry per item of ``shape``.

    ``shape[i]`` lists the indexes (into the result, 0 being the root) of entry
    ``i + 1``'s parents. Entry ``i`` writes ``k<i mod 7> = i`` to store ``d``,
    naming as store parents those of its parents that wrote ``d``: the entries are
    valid for the verifier, not only well-formed.
    """
    entries = [root_entry(key)]
    for index, parent_indexes in enumerate(shape, start=1):
        parents = [entries[i] for i in sorted(set(parent_indexes))]
        entries.append(child_entry(key, entries[0], parents, f"k{index % 7}", index))
    return entries


def expected_tips(entries: Sequence[Entry]) -> list[str]:
    """Tips computed from scratch: the entries nobody names as a parent."""
    referenced = {p for e in entries for p in e.parents}
    return sorted(e.id for e in entries if e.id not in referenced)


@st.composite
def dag_shapes(draw: st.DrawFn, max_entries: int = 16) -> list[list[int]]:
    """Random DAG shapes for :func:`build_dag`: chains, forks and merges."""
    count = draw(st.integers(min_value=1, max_value=max_entries))
    return [
        draw(st.lists(st.integers(0, index - 1), min_size=1, max_size=3, unique=True))
        for index in range(1, count + 1)
    ]


def topological_order(entries: Sequence[Entry], rng: random.Random) -> list[Entry]:
    """A random order of ``entries`` in which every parent comes before its children."""
    remaining = {e.id: e for e in entries}
    placed: set[str] = set()
    order: list[Entry] = []
    while remaining:
        ready = sorted(i for i, e in remaining.items() if placed.issuperset(e.parents))
        chosen = remaining.pop(rng.choice(ready))
        placed.add(chosen.id)
        order.append(chosen)
    return order


FORK_EVERY = 100
"""How often :func:`build_entries` forks its chain in two (and merges it again)."""


def build_entries(count: int, key: SigningKey | None = None) -> list[Entry]:
    """``count`` entries of one tree owned by ``key`` (a fresh one if None), parents
    first: a chain that forks in two every :data:`FORK_EVERY` entries and merges
    again at the next."""
    key = key or SigningKey.generate()
    root = root_entry(key)
    entries = [root]
    tips = [root]
    while len(entries) < count:
        index = len(entries)
        entry = child_entry(key, root, tips, f"k{index}", index)
        if index % FORK_EVERY == 0 and index + 1 < count:
            sibling = child_entry(key, root, tips, f"k{index + 1}", index + 1)
            entries += [entry, sibling]
            tips = [entry, sibling]
        else:
            entries.append(entry)
            tips = [entry]
    return entries


def build_entries_by_many(
    count: int, authors: int = 16, owner: SigningKey | None = None
) -> list[Entry]:
    """``count`` entries of one tree like :func:`build_entries`, but written by
    ``authors`` keys in turn: the owner's root, one settings entry granting them
    write, then the chain."""
    owner = owner or SigningKey.generate()
    keys = [SigningKey.generate() for _ in range(authors)]
    root = root_entry(owner)
    grants = settings_on_root(owner, root, [SetOp(("auth", k.public_key), "write") for k in keys])
    entries, tips = [root, grants], [grants]
    while len(entries) < count:
        index = len(entries)
        entry = child_entry(keys[index % authors], root, tips, f"k{index}", index)
        entries.append(entry)
        tips = [entry]
    return entries
