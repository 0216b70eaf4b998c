"""An incremental sync over real transports sends little: the new entries, in at most
two round trips, whatever the tree's size (issue 14's target, which ``python -m bench
incremental`` measures at 100,000 entries over sim).

Two nodes on 127.0.0.1: A holds a tree, B pulls it whole, then A gets ``d`` new
entries (imported, so nothing pushes them) and B syncs once from its cursor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from eidetica.actors.config import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.protocol.entry import Entry
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import MAX_ENTRIES_PER_BATCH
from eidetica.storage.instance import Instance, Receipt
from eidetica.storage.memory import MemoryBackend
from tests.builders import build_entries
from tests.counting import Counting

QUIET = SyncConfig(periodic_sync=86_400.0, connection_check=86_400.0, retry_sweep=86_400.0)
TREE = 3_000
DELTAS = (1, 100, 3_000)


async def _import(instance: Instance, entries: Sequence[Entry]) -> None:
    for start in range(0, len(entries), 1000):
        await instance.import_entries([entry.raw for entry in entries[start : start + 1000]])


def _recording(instance: Instance, batches: list[int]) -> None:
    """Record the size of every batch ``instance`` receives."""
    receive = instance.receive

    async def recorded(tree: str, raws: Iterable[bytes], *args: Any, **kwargs: Any) -> Receipt:
        raws = list(raws)
        batches.append(len(raws))
        return await receive(tree, raws, *args, **kwargs)

    instance.receive = recorded  # type: ignore[method-assign]


@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_an_incremental_sync_sends_the_new_entries_in_one_round_trip(scheme: str) -> None:
    key = SigningKey.generate()
    entries = build_entries(TREE + sum(DELTAS), key)
    a = Instance(MemoryBackend(), key)
    b = Instance(MemoryBackend(), SigningKey.generate())
    batches: list[int] = []
    _recording(b, batches)
    inner = HttpTransport() if scheme == "http" else WebSocketTransport()
    counting = Counting(inner, long_poll=False)
    try:
        await _import(a, entries[:TREE])
        root_id = entries[0].id
        await (await a.open_tree(root_id)).grant("*", "read")
        with trio.fail_after(120):
            async with (
                inner,
                open_sync(a, config=QUIET) as a_sync,
                open_sync(b, config=QUIET, transports={scheme: counting}) as b_sync,
            ):
                address = await a_sync.start_server(f"{scheme}://127.0.0.1:0")
                peer_a = await b_sync.connect(address)
                await b_sync.add_tree_sync(peer_a, root_id)
                await b_sync.sync_with_peer(peer_a, root_id)
                start = TREE
                for d in DELTAS:
                    new = entries[start : start + d]
                    start += d
                    await _import(a, new)
                    await trio.testing.wait_all_tasks_blocked(0.01)
                    requests, sent = counting.requests, counting.both_ways
                    batches.clear()
                    await b_sync.sync_with_peer(peer_a, root_id)
                    ids = [entry.id for entry in new]
                    assert len(b.backend.has(ids)) == d
                    new_bytes = sum(len(entry.raw) for entry in new)
                    assert counting.requests - requests == 1, d
                    # The target is 1.2 x the new bytes + 2 KB, in MessagePack (ws);
                    # HTTP's JSON carries entries as base64, 4/3 of their bytes.
                    expansion = 4 / 3 if scheme == "http" else 1.0
                    assert counting.both_ways - sent <= expansion * 1.2 * new_bytes + 2048, d
                    # One page, stored a batch at a time.
                    assert max(batches) <= MAX_ENTRIES_PER_BATCH
                    assert sum(batches) == d
    finally:
        a.close()
        b.close()
