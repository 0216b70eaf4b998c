"""What the transport costs: the sync engine over sim, HTTP and WebSocket, compared.

The engine does the same work whatever carries its requests; this benchmark shows
what each carrier adds on top, so that a slow sync over a real network can be put
down to the network, the transport or the engine. HTTP and WebSocket use real
sockets on 127.0.0.1 (servers bound to port 0); the sim transport, which has no
latency and no encoding of its own, is the reference: the engine's own cost.

*Initial sync.* Node A (an in-memory instance whose device key is the tree's owner
key) holds a tree of :data:`ENTRIES` entries (built once with the pattern of
:func:`tests.builders.build_entries` and imported :data:`BATCH` at a time, then
``grant("*", "read")``, all outside the timing). For each transport a fresh
in-memory node B connects to A and relates the tree, and the timed part is
``await b_sync.sync_with_peer(peer_a)``: a pull of the whole tree.

*Bytes on the wire.* During that pull the transport B's engine uses is wrapped, so
every ``request()`` counts the bytes of the request it sends and of the answer it
gets: the envelopes. HTTP compresses large answers, so for HTTP the bodies as they
crossed the wire (``HttpTransport.wire_sent``/``wire_received``) are shown too; the
other transports send envelopes as they are. HTTP headers, WebSocket frame headers
and TCP are not counted. The figure is the total over the entries pulled, and its
ratio to the mean size of an entry's canonical bytes (``Entry.raw``).

*Commit to visible.* Fresh in-memory nodes A and B, linked both ways on a small
tree B may write (as in the conformance tests), initial sync done. For each of
:data:`COMMITS` commits on A (one document write), the wall-clock time from just
before the commit until B's document shows the value. B is not polled: the bench
waits on ``Instance.changed`` with the version read before the commit, so it wakes
as soon as B stores something. After each commit it waits for both nodes to fall
idle, so each figure starts from rest.

Real time throughout (``time.perf_counter``); long timer periods keep periodic syncs
and connection checks out of the measurements.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import trio
import trio.testing

import eidetica
from bench._table import print_table
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.base import Transport
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.transports.sim import SimNetwork, SimTransport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.protocol.keys import SigningKey
from eidetica.storage.instance import Instance
from eidetica.storage.memory import MemoryBackend
from tests.builders import build_entries
from tests.counting import Counting

ENTRIES = 100_000
"""Entries of the tree B pulls in the initial sync, the root included."""
BATCH = 1_000
"""Entries per ``import_entries`` call when filling A."""
COMMITS = 300
VISIBLE_WITHIN = 10.0
"""Seconds a commit may take to show on B before the benchmark gives up."""
SYNC_WITHIN = 600.0
"""Seconds the initial sync over one transport may take before the benchmark gives up."""
LISTEN = {"sim": "sim://{name}", "http": "http://127.0.0.1:0", "ws": "ws://127.0.0.1:0"}
"""Where a node listens, by transport; the order of the tables' rows."""
QUIET = SyncConfig(periodic_sync=86_400.0, connection_check=86_400.0, retry_sweep=86_400.0)


@asynccontextmanager
async def _transport(scheme: str, network: SimNetwork, name: str) -> AsyncIterator[Transport]:
    """A fresh transport of ``scheme``, closed when the block ends."""
    if scheme == "sim":
        yield SimTransport(network, name=name)
    elif scheme == "http":
        http = HttpTransport()
        async with http:
            yield http
    else:
        async with WebSocketTransport() as websocket:
            yield websocket


@dataclass
class Initial:
    """One initial sync: its seconds, and what went through B's transport."""

    seconds: float
    entries: int
    requests: int
    sent: int
    received: int
    wire: int
    """Body bytes both ways as they crossed the wire (compressed, over HTTP)."""


async def _held_all(node: Instance, root_id: str, tips: Sequence[str]) -> None:
    """Return once ``node``'s tips of the tree are ``tips``: then it holds every entry
    below them too, since storage takes an entry only once its parents are there. (A
    count of the entries held, at every change, cost the bench more than the pull.)"""
    since = node.version
    while node.backend.tips(root_id) != list(tips):
        since = await node.changed(since)


async def _pull(
    a_address: str, scheme: str, network: SimNetwork, root_id: str, tips: Sequence[str]
) -> Initial:
    """A fresh node B pulls the tree from A over ``scheme``; time the pull."""
    async with (
        eidetica.open_instance(None) as b,
        _transport(scheme, network, f"b-{scheme}") as inner,
    ):
        counting = Counting(inner)
        async with open_sync(
            b, network=network, name=f"b-{scheme}", config=QUIET, transports={scheme: counting}
        ) as b_sync:
            peer_a = await b_sync.connect(a_address)
            await trio.testing.wait_all_tasks_blocked()
            before = (counting.requests, counting.sent, counting.received, _wire(inner, counting))
            began = time.perf_counter()
            # Relating the tree starts a sync of its own: time from there until B
            # holds every entry, however many rounds that takes.
            await b_sync.add_tree_sync(peer_a, root_id)
            with trio.fail_after(SYNC_WITHIN):
                await b_sync.sync_with_peer(peer_a)
                await _held_all(b, root_id, tips)
            seconds = time.perf_counter() - began
            pulled = len(await (await b.open_tree(root_id)).entries())
            return Initial(
                seconds=seconds,
                entries=pulled,
                requests=counting.requests - before[0],
                sent=counting.sent - before[1],
                received=counting.received - before[2],
                wire=_wire(inner, counting) - before[3],
            )


def _wire(inner: Transport, counting: Counting) -> int:
    """Body bytes both ways on the wire so far: HTTP's own count, else the envelopes."""
    if isinstance(inner, HttpTransport):
        return inner.wire_sent + inner.wire_received
    return counting.sent + counting.received


async def filled(key: SigningKey, raw: Sequence[bytes]) -> tuple[Instance, str]:
    """An in-memory node A with device key ``key`` (the tree's owner) holding ``raw``,
    imported :data:`BATCH` at a time, its tree readable by anyone; and the tree's root
    id. The caller closes A."""
    a = Instance(MemoryBackend(), key)
    for start in range(0, len(raw), BATCH):
        await a.import_entries(raw[start : start + BATCH])
    root_id = (await a.trees())[0].root_id
    await (await a.open_tree(root_id)).grant("*", "read")
    return a, root_id


async def initial_syncs(key: SigningKey, raw: Sequence[bytes]) -> dict[str, Initial]:
    """Fill A with ``raw`` (untimed), then pull it into a fresh B over each transport."""
    network = SimNetwork()
    a, root_id = await filled(key, raw)
    try:
        results: dict[str, Initial] = {}
        async with open_sync(a, network=network, name="a", config=QUIET) as a_sync:
            tips = a.backend.tips(root_id)
            for scheme, listen in LISTEN.items():
                address = await a_sync.start_server(listen.format(name="a"))
                results[scheme] = await _pull(address, scheme, network, root_id, tips)
        return results
    finally:
        a.close()


@dataclass(frozen=True)
class _Node:
    inst: eidetica.Instance
    sync: Sync
    address: str


async def _visibility(scheme: str, count: int) -> list[float]:
    """Seconds from just before each of ``count`` commits on A until B shows it."""
    network = SimNetwork()
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("a", "b"):
            inst = await stack.enter_async_context(eidetica.open_instance(None))
            sync = await stack.enter_async_context(
                open_sync(inst, network=network, name=name, config=QUIET)
            )
            nodes.append(
                _Node(inst, sync, await sync.start_server(LISTEN[scheme].format(name=name)))
            )
        a, b = nodes
        tree = await a.inst.create_tree("bench")
        await tree.grant(b.inst.public_key, "write")
        peer_a = await b.sync.connect(a.address)
        await b.sync.add_tree_sync(peer_a, tree.root_id)
        await b.sync.sync_with_peer(peer_a)
        peer_b = await a.sync.connect(b.address)
        await a.sync.add_tree_sync(peer_b, tree.root_id)
        theirs = await b.inst.open_tree(tree.root_id)
        await trio.testing.wait_all_tasks_blocked()
        visible: list[float] = []
        for index in range(count):
            since = b.inst.version
            began = time.perf_counter()
            async with tree.transaction() as op:
                op.doc("d").set("n", index)
            with trio.fail_after(VISIBLE_WITHIN):
                while (await theirs.doc("d")).get("n") != index:
                    since = await b.inst.changed(since)
            visible.append(time.perf_counter() - began)
            await trio.testing.wait_all_tasks_blocked()
        return visible


async def _all_visibility(count: int) -> dict[str, list[float]]:
    return {scheme: await _visibility(scheme, count) for scheme in LISTEN}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    began = time.perf_counter()
    key = SigningKey.generate()
    entries = build_entries(ENTRIES, key)
    raw = [entry.raw for entry in entries]
    mean_bytes = sum(len(item) for item in raw) / len(raw)
    print(
        f"setup: built {ENTRIES:,} entries (mean {mean_bytes:.0f} B canonical) "
        f"in {time.perf_counter() - began:.1f} s"
    )
    initial = trio.run(initial_syncs, key, raw)
    for scheme, figures in initial.items():
        # The tree B pulled: the built entries and A's grant.
        if figures.entries != ENTRIES + 1:
            raise RuntimeError(
                f"{scheme}: B holds {figures.entries:,} entries, not {ENTRIES + 1:,}"
            )
    print_table(
        f"Initial sync: B pulls {ENTRIES + 1:,} entries from A (in-memory nodes)",
        ["transport", "seconds", "entries/s", "µs/entry", "requests"],
        [
            [
                scheme,
                f"{figures.seconds:.2f}",
                f"{figures.entries / figures.seconds:,.0f}",
                f"{figures.seconds / figures.entries * 1e6:.1f}",
                f"{figures.requests:,}",
            ]
            for scheme, figures in initial.items()
        ],
    )
    print_table(
        f"Bytes through B's transport per entry pulled (envelopes only; "
        f"mean canonical entry {mean_bytes:.0f} B)",
        [
            "transport",
            "sent/entry",
            "received/entry",
            "total/entry",
            "x canonical",
            "on the wire/entry",
            "x canonical",
        ],
        [
            [
                scheme,
                f"{figures.sent / figures.entries:,.1f}",
                f"{figures.received / figures.entries:,.1f}",
                f"{(figures.sent + figures.received) / figures.entries:,.1f}",
                f"{(figures.sent + figures.received) / figures.entries / mean_bytes:.2f}",
                f"{figures.wire / figures.entries:,.1f}",
                f"{figures.wire / figures.entries / mean_bytes:.2f}",
            ]
            for scheme, figures in initial.items()
        ],
    )
    visibility = trio.run(_all_visibility, COMMITS)
    rows = []
    for scheme, seconds in visibility.items():
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        rows.append(
            [
                scheme,
                f"{len(seconds):,}",
                _ms(statistics.median(seconds)),
                _ms(cuts[98]),
                _ms(max(seconds)),
            ]
        )
    print_table(
        "Commit on A -> visible on B (ms, from rest, in-memory nodes)",
        ["transport", "commits", "median", "p99", "max"],
        rows,
    )


if __name__ == "__main__":
    main()
