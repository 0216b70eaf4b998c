"""What syncing costs the sync tree: its entries and bytes after 1,000 syncs.

Two nodes on the sim network sync one tree; before each of the 1,000 syncs one node
commits, so every sync moves an entry. Printed: the sync tree of the node that
syncs, before and after, as a ratio of its size at the start (measured in the
same run). Cursors, metadata, history and retries are node-local records, so the
sync tree should not grow at all.
"""

from __future__ import annotations

import time

import trio

import eidetica
from bench._table import print_table
from eidetica.actors.state import SyncState
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.protocol.entry import Entry

SYNCS = 1_000


async def _measure() -> tuple[int, int, int, int, float]:
    """Entries and bytes of the sync tree before and after, and the seconds taken."""
    network = SimNetwork()
    async with (
        eidetica.open_instance(None) as a,
        eidetica.open_instance(None) as b,
        open_sync(a, network=network, name="a") as a_sync,
        open_sync(b, network=network, name="b") as b_sync,
    ):
        tree = await a.create_tree(name="t")
        await tree.grant(b.public_key, "write")
        peer = await a_sync.connect(await b_sync.start_server("sim://b"))
        await a_sync.add_tree_sync(peer, tree.root_id)
        await b_sync.add_tree_sync(
            await b_sync.connect(await a_sync.start_server("sim://a")), tree.root_id
        )
        sync_tree = (await SyncState.open(a)).tree
        before = await sync_tree.entries()
        start = time.perf_counter()
        for i in range(SYNCS):
            async with tree.transaction() as op:
                op.doc("d").set("n", i)
            await a_sync.sync_with_peer(peer)
        seconds = time.perf_counter() - start
        after = await sync_tree.entries()
    return len(before), _bytes(before), len(after), _bytes(after), seconds


def _bytes(entries: list[Entry]) -> int:
    return sum(len(entry.raw) for entry in entries)


def main() -> None:
    entries_before, bytes_before, entries_after, bytes_after, seconds = trio.run(_measure)
    print_table(
        f"the syncing node's sync tree after {SYNCS:,} syncs ({seconds:.1f} s)",
        ["", "at start", f"after {SYNCS:,}", "ratio"],
        [
            [
                "entries",
                str(entries_before),
                str(entries_after),
                f"{entries_after / entries_before:.2f}",
            ],
            ["bytes", str(bytes_before), str(bytes_after), f"{bytes_after / bytes_before:.2f}"],
        ],
    )
