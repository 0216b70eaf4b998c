"""What remove-wins revocation costs: a 100,000-entry tree with 1,000 voided entries.

Two trees of the same shape are built: the owner grants writer K, K writes a branch of
:data:`REVOKED` entries, the owner writes a chain of the rest, and a merge joins the
two. In the *revoked* tree one settings entry of the owner's chain revokes K, so K's
whole branch is concurrent with its revocation and does not count; in the *baseline*
tree that entry changes an unrelated setting instead. Timed on SQLite:

- importing every entry (verification, storage, judging each entry);
- the first read of document ``d`` on a reopened node (a fold of every entry);
- ``Tree.voided()`` on a reopened node (which entries do not count, and why).

Figures are printed with the revoked tree's ratio to the baseline's, measured in the
same run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

import eidetica
from bench._table import print_table
from eidetica.protocol.entry import SETTINGS_STORE, Entry, StoreWrite, create_entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage.crdt import DeleteOp, Op, SetOp, encode_ops
from tests.builders import root_entry

ENTRIES = 100_000
REVOKED = 1_000
BATCH = 1_000
STORE = "d"


def _child(
    key: SigningKey, root: Entry, parents: Sequence[Entry], stores: list[StoreWrite]
) -> Entry:
    return create_entry(
        key,
        tree=root.id,
        parents=[p.id for p in parents],
        height=max(p.height for p in parents) + 1,
        stores=stores,
    )


def _data(index: int, store_parents: Sequence[Entry]) -> list[StoreWrite]:
    ops = encode_ops([SetOp((f"k{index % 5000}",), index)])
    return [StoreWrite(STORE, tuple(p.id for p in store_parents), ops)]


def _settings(ops: list[Op], tips: Sequence[Entry]) -> list[StoreWrite]:
    return [StoreWrite(SETTINGS_STORE, tuple(t.id for t in tips), encode_ops(ops))]


def build(revoke: bool) -> list[Entry]:
    """The entries of one tree, parents first."""
    owner, writer = SigningKey.generate(), SigningKey.generate()
    root = root_entry(owner)
    grant = _child(
        owner, root, [root], _settings([SetOp(("auth", writer.public_key), "write")], [root])
    )
    entries = [root, grant]
    branch: list[Entry] = []
    for i in range(REVOKED):
        branch.append(_child(writer, root, branch[-1:] or [grant], _data(i, branch[-1:])))
    chain: list[Entry] = []
    middle = (ENTRIES - REVOKED) // 2
    for i in range(ENTRIES - REVOKED - 3):
        parents = chain[-1:] or [grant]
        if i == middle:
            ops: list[Op] = (
                [DeleteOp(("auth", writer.public_key))] if revoke else [SetOp(("note",), 1)]
            )
            chain.append(_child(owner, root, parents, _settings(ops, [grant])))
        else:
            last_write = [e for e in chain[-2:] if e.store(STORE) is not None][-1:]
            chain.append(_child(owner, root, parents, _data(REVOKED + i, last_write)))
    merge = _child(owner, root, [branch[-1], chain[-1]], _data(ENTRIES, [branch[-1], chain[-1]]))
    return [*entries, *branch, *chain, merge]


async def _measure(directory: Path, entries: list[Entry]) -> dict[str, float]:
    """Seconds for each timed step."""
    times: dict[str, float] = {}
    async with eidetica.open_instance(directory) as node:
        start = time.perf_counter()
        for first in range(0, len(entries), BATCH):
            await node.import_entries(entries[first : first + BATCH])
        times["import every entry"] = time.perf_counter() - start
    for step in ("first read of d (fold)", "voided()"):
        async with eidetica.open_instance(directory) as node:
            tree = await node.open_tree(entries[0].id)
            start = time.perf_counter()
            if step == "voided()":
                voided = await tree.voided()
            else:
                await tree.doc(STORE)
            times[step] = time.perf_counter() - start
    times["entries voided"] = float(len(voided))
    return times


def main() -> None:
    results = {}
    for name, revoke in (("baseline", False), ("revoked", True)):
        entries = build(revoke)
        with tempfile.TemporaryDirectory(prefix="eidetica-bench-") as directory:
            results[name] = trio.run(_measure, Path(directory), entries)
    rows = []
    for step in results["baseline"]:
        base, revoked = results["baseline"][step], results["revoked"][step]
        if step == "entries voided":
            rows.append([step, f"{base:.0f}", f"{revoked:.0f}", ""])
        else:
            rows.append(
                [step, f"{base * 1e3:.0f}", f"{revoked * 1e3:.0f}", f"{revoked / base:.2f}"]
            )
    print_table(
        f"{ENTRIES:,} entries, {REVOKED:,} by a revoked writer (SQLite)",
        ["step", "baseline ms", "revoked ms", "ratio"],
        rows,
    )
