"""What an incremental sync costs: a node that holds a big tree catching up by ``d`` entries.

The target (issue 14) is that catching up costs at most 2 round trips and at most
1.2 x the new entries' bytes + 2 KB on the wire, whatever the tree's size: bytes close
to the difference, not to the tree. This benchmark measures how far the engine is
from it, over the sim transport (no latency, no encoding of its own), so the figures
are the engine's own.

*Set-up, untimed.* Node A (an in-memory instance whose device key is the tree's
owner key) holds a tree of ``tree_entries`` entries (built with
:func:`tests.builders.build_entries` and imported :data:`BATCH` at a time, then
``grant("*", "read")``, as in :mod:`bench.transports`). Node B connects to A (the
handshake), relates the tree and pulls it whole once. From then on B is a linked peer
with a cursor on A, and the handshake is not part of any figure below.

*Each d, in turn.* A imports ``d`` new entries that extend the tree (the same build,
continued). ``import_entries`` runs no commit or receive hook, so nothing pushes them
to B: the benchmark checks that B holds none of them, and that no request crossed
either node's transport, before it times ``await b_sync.sync_with_peer(peer_a,
tree)``, one sync of that tree, and checks afterwards that B holds them all. The
``d`` run one after another on the same two nodes, so each sync starts from a tree
the earlier ones grew (``tree_entries`` + 1 + the earlier ``d``).

*Counting.* Both nodes' sim transports are wrapped (:class:`tests.counting.Counting`)
so every ``request()`` counts the bytes of its request and of its answer (the
envelopes). Round trips are the ``request()`` calls made during the timed sync and
bytes on the wire the bytes both ways, over both nodes' transports (A sends none in
practice: B's sync is B's requests and A's answers). ``new_entry_bytes`` is the sum of
``len(Entry.raw)`` over the ``d`` new entries; ``limit_bytes`` is the target, 1.2 x
that + 2,048, and ``within_limit`` is 1 when the bytes on the wire are at most that
(the printed table's last check adds the round trips).

Real time (``time.perf_counter``); long timer periods (:data:`bench.transports.QUIET`)
keep periodic syncs, retries and connection checks out of the measurements.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import trio
import trio.testing

from bench._table import print_table
from bench.transports import BATCH, QUIET
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork, SimTransport
from eidetica.protocol.entry import Entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage.instance import Instance
from eidetica.storage.memory import MemoryBackend
from tests.builders import build_entries
from tests.counting import Counting

ENTRIES = 100_000
"""Entries of the tree A and B share before the first incremental sync, the root included."""
DELTAS = (1, 100, 10_000)
"""New entries on A before each incremental sync."""
TARGET_ROUND_TRIPS = 2
TARGET_FACTOR = 1.2
TARGET_SLACK = 2048
"""The target: at most ``TARGET_FACTOR`` x the new entries' bytes + ``TARGET_SLACK``."""
SYNC_WITHIN = 600.0
"""Seconds one sync (the initial pull included) may take before the benchmark gives up."""


async def _import(instance: Instance, entries: Sequence[Entry]) -> None:
    for start in range(0, len(entries), BATCH):
        await instance.import_entries([entry.raw for entry in entries[start : start + BATCH]])


def _traffic(*transports: Counting) -> tuple[int, int]:
    """Requests sent so far through ``transports``, and bytes both ways."""
    requests = sum(t.requests for t in transports)
    return requests, sum(t.sent + t.received for t in transports)


async def _measure(
    key: SigningKey, tree: Sequence[Entry], batches: Sequence[Sequence[Entry]]
) -> list[dict[str, float]]:
    network = SimNetwork()
    a = Instance(MemoryBackend(), key)
    b = Instance(MemoryBackend(), SigningKey.generate())
    try:
        await _import(a, tree)
        root_id = tree[0].id
        await (await a.open_tree(root_id)).grant("*", "read")
        async with (
            SimTransport(network, name="a") as a_inner,
            SimTransport(network, name="b") as b_inner,
        ):
            a_counting, b_counting = Counting(a_inner), Counting(b_inner)
            async with (
                open_sync(
                    a, network=network, name="a", config=QUIET, transports={"sim": a_counting}
                ) as a_sync,
                open_sync(
                    b, network=network, name="b", config=QUIET, transports={"sim": b_counting}
                ) as b_sync,
            ):
                peer_a = await b_sync.connect(await a_sync.start_server("sim://a"))
                await b_sync.add_tree_sync(peer_a, root_id)
                with trio.fail_after(SYNC_WITHIN):
                    await b_sync.sync_with_peer(peer_a, root_id)
                held = len(await (await b.open_tree(root_id)).entries())
                if held != len(tree) + 1:  # the built entries and A's grant
                    raise RuntimeError(f"B pulled {held:,} entries, not {len(tree) + 1:,}")
                results = []
                for new in batches:
                    await trio.testing.wait_all_tasks_blocked()
                    before = _traffic(a_counting, b_counting)
                    await _import(a, new)
                    await trio.testing.wait_all_tasks_blocked()
                    ids = [entry.id for entry in new]
                    if b.backend.has(ids):
                        raise RuntimeError("B got some of A's new entries before the sync")
                    if _traffic(a_counting, b_counting) != before:
                        raise RuntimeError("requests crossed between the nodes before the sync")
                    began = time.perf_counter()
                    with trio.fail_after(SYNC_WITHIN):
                        await b_sync.sync_with_peer(peer_a, root_id)
                    seconds = time.perf_counter() - began
                    after = _traffic(a_counting, b_counting)
                    if len(b.backend.has(ids)) != len(ids):
                        raise RuntimeError(f"B lacks some of the {len(ids):,} new entries")
                    new_bytes = sum(len(entry.raw) for entry in new)
                    wire = after[1] - before[1]
                    limit = TARGET_FACTOR * new_bytes + TARGET_SLACK
                    results.append(
                        {
                            "d": float(len(new)),
                            "round_trips": float(after[0] - before[0]),
                            "bytes_on_wire": float(wire),
                            "new_entry_bytes": float(new_bytes),
                            "ratio": wire / new_bytes,
                            "limit_bytes": limit,
                            "within_limit": float(wire <= limit),
                            "seconds": seconds,
                        }
                    )
                return results
    finally:
        a.close()
        b.close()


def measure(tree_entries: int = ENTRIES, deltas: Sequence[int] = DELTAS) -> list[dict[str, float]]:
    """One incremental sync per ``d`` in ``deltas`` (in turn, on the same two nodes)
    after a shared tree of ``tree_entries`` entries; see the module's docstring."""
    key = SigningKey.generate()
    entries = build_entries(tree_entries + sum(deltas), key)
    batches = []
    start = tree_entries
    for d in deltas:
        batches.append(entries[start : start + d])
        start += d
    return trio.run(_measure, key, entries[:tree_entries], batches)


def _met(row: dict[str, float]) -> bool:
    """Whether a sync met the whole target: its bytes and its round trips."""
    return bool(row["within_limit"]) and row["round_trips"] <= TARGET_ROUND_TRIPS


def main() -> None:
    began = time.perf_counter()
    results = measure()
    print_table(
        f"Incremental sync: B, linked and holding A's {ENTRIES + 1:,}-entry tree, syncs "
        f"once after A gets d new entries (in turn; sim transport, envelopes both ways)",
        [
            "d",
            "round trips",
            "bytes on wire",
            "new entry bytes",
            "wire/new",
            "limit bytes",
            "bytes ok",
            "target met",
            "ms",
        ],
        [
            [
                f"{row['d']:,.0f}",
                f"{row['round_trips']:.0f}",
                f"{row['bytes_on_wire']:,.0f}",
                f"{row['new_entry_bytes']:,.0f}",
                f"{row['ratio']:.2f}",
                f"{row['limit_bytes']:,.0f}",
                "yes" if row["within_limit"] else "no",
                "yes" if _met(row) else "no",
                f"{row['seconds'] * 1e3:,.1f}",
            ]
            for row in results
        ],
    )
    print(
        f"\ntarget: at most {TARGET_ROUND_TRIPS} round trips and "
        f"{TARGET_FACTOR} x new entry bytes + {TARGET_SLACK:,} B; "
        f"set-up and syncs took {time.perf_counter() - began:.1f} s"
    )


if __name__ == "__main__":
    main()
