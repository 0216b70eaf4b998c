"""What ``sync.events()`` costs: a 100,000-entry pull with and without a consumer.

Node A (in memory) holds a tree of :data:`ENTRIES` entries (built as in
``bench.transports``, outside the timing). A fresh in-memory node B pulls it over the
sim transport, timed from ``sync_with_peer`` until it returns, in three ways taken
in turn :data:`ROUNDS` times: nobody listening; one ``sync.events()`` subscription
read by a task that counts every event it gets (its events per second are those it
read over the pull's time); and a listener on the bus (what the metrics use). The
figure that matters is the ratio of each pull's time to the pull with nobody
listening, measured in the same run.

A pull publishes a few events per page, far fewer than a subscription can take, so
the last table shows what one subscription sustains: :data:`FLOOD` progress events
published as fast as one task can (a checkpoint every :data:`BURST`, so the reader
runs), read by another task, timed until the reader has them all, none missed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import trio
import trio.lowlevel
import trio.testing

from bench._table import print_table
from bench.transports import BATCH, QUIET
from eidetica.actors.bus import Bus
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.events import Event, Missed, SyncProgress
from eidetica.protocol.keys import SigningKey
from eidetica.storage.instance import Instance
from eidetica.storage.memory import MemoryBackend
from tests.builders import build_entries

ENTRIES = 100_000
ROUNDS = 2
WAYS = ("nobody", "subscription", "listener")
FLOOD = 200_000
BURST = 100


async def _flood() -> tuple[float, int, int]:
    """Seconds to publish and read :data:`FLOOD` events; events read, and missed."""
    bus = Bus()
    read, missed = [0], [0]
    event = SyncProgress("ed25519:peer", "0" * 64, 1, 1, 1)
    async with trio.open_nursery() as nursery, bus.subscribe(buffer=BURST * 2) as events:

        async def consume() -> None:
            async for got in events:
                if isinstance(got, Missed):
                    missed[0] += got.count
                else:
                    read[0] += 1

        nursery.start_soon(consume)
        began = time.perf_counter()
        for n in range(FLOOD):
            bus.publish(event)
            if n % BURST == BURST - 1:
                await trio.lowlevel.checkpoint()
        bus.close()
    return time.perf_counter() - began, read[0], missed[0]


async def _pull(a_address: str, network: SimNetwork, root_id: str, way: str) -> tuple[float, int]:
    """Seconds B takes to pull the tree, and the events its consumer read."""
    b = Instance(MemoryBackend(), SigningKey.generate())
    read = [0]

    def heard(event: Event) -> None:
        read[0] += 1

    try:
        async with open_sync(
            b, network=network, name=f"b-{time.perf_counter_ns()}", config=QUIET
        ) as b_sync:
            peer_a = await b_sync.connect(a_address)
            await b_sync.add_tree_sync(peer_a, root_id)
            async with trio.open_nursery() as nursery, b_sync.events(buffer=1 << 16) as events:
                if way == "subscription":

                    async def consume() -> None:
                        async for event in events:
                            read[0] += event.count if isinstance(event, Missed) else 1

                    nursery.start_soon(consume)
                elif way == "listener":
                    b_sync._supervisor.bus.listen(heard)
                began = time.perf_counter()
                await b_sync.sync_with_peer(peer_a)
                seconds = time.perf_counter() - began
                await trio.testing.wait_all_tasks_blocked()
                events.close()
            return seconds, read[0]
    finally:
        b.close()


async def _run(key: SigningKey, raw: Sequence[bytes]) -> dict[str, list[tuple[float, int]]]:
    network = SimNetwork()
    a = Instance(MemoryBackend(), key)
    for start in range(0, len(raw), BATCH):
        await a.import_entries(raw[start : start + BATCH])
    root_id = (await a.trees())[0].root_id
    await (await a.open_tree(root_id)).grant("*", "read")
    results: dict[str, list[tuple[float, int]]] = {way: [] for way in WAYS}
    async with open_sync(a, network=network, name="a", config=QUIET) as a_sync:
        address = await a_sync.start_server("sim://a")
        for _ in range(ROUNDS):
            for way in WAYS:
                results[way].append(await _pull(address, network, root_id, way))
    return results


def main() -> None:
    key = SigningKey.generate()
    raw = [entry.raw for entry in build_entries(ENTRIES, key)]
    results = trio.run(_run, key, raw)
    limit = statistics.median(seconds for seconds, _ in results["nobody"])
    rows = []
    for way in WAYS:
        seconds = statistics.median(s for s, _ in results[way])
        events = max(n for _, n in results[way])
        rows.append(
            [
                way,
                f"{seconds:.2f}",
                f"{ENTRIES / seconds:,.0f}",
                f"{events:,}",
                f"{events / seconds:,.0f}",
                f"{seconds / limit:.2f}",
            ]
        )
    print_table(
        f"pull of {ENTRIES:,} entries over sim, median of {ROUNDS}",
        ["consumer", "seconds", "entries/s", "events read", "events/s", "x nobody"],
        rows,
    )
    seconds, read, missed = trio.run(_flood)
    print_table(
        "one subscription, flooded",
        ["events", "seconds", "events/s", "missed"],
        [[f"{FLOOD:,}", f"{seconds:.2f}", f"{read / seconds:,.0f}", f"{missed:,}"]],
    )
