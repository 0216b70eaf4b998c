"""What a peer that stays away costs a node on disk: the writes and bytes of its sync
bookkeeping, counted on a real SQLite file, stay within a bound fixed by the retry
limit and the number of pending pushes, not by how long the peer is gone."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.storage.backend import Backend
from tests.waiting import settle

OUTAGE = 2 * 3600.0
PENDING = 300
BOOKKEEPING = "sync/"
"""The prefix of the node-local keys of sync bookkeeping (docs/actors.md)."""


class LocalWrites:
    """Every node-local write of sync bookkeeping a backend takes: how many per key,
    and how many bytes of value. The backend's ``set_local`` is wrapped, so nothing of
    the engine is looked into."""

    def __init__(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        set_local = backend.set_local

        def counted(key: str, value: str) -> None:
            if key.startswith(BOOKKEEPING):
                self.writes[key] += 1
                self.bytes[key] += len(value)  # JSON, ASCII: characters are bytes
            set_local(key, value)

        monkeypatch.setattr(backend, "set_local", counted)

    def clear(self) -> None:
        self.writes.clear()
        self.bytes.clear()


def on_disk(directory: Path) -> int:
    """Bytes of the node's database, with the write-ahead log beside it."""
    return sum(path.stat().st_size for path in directory.glob("eidetica.db*"))


def largest_retry_record(peer: str, tree: str, config: SyncConfig) -> int:
    """Bytes one pending push adds to the persisted retry queue, at its longest: a
    uuid id, one entry id, and as many attempts as it may ever show."""
    record = {
        "attempts": config.max_retries + 1,
        "entry_ids": ["0" * 64],
        "peer": peer,
        "tree": tree,
    }
    return len(json.dumps({uuid.uuid4().hex: record}, sort_keys=True)) + len(", ")


async def test_a_peer_away_two_hours_with_300_pending_pushes_costs_bounded_writes_and_bytes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 commits to a related tree while its peer is partitioned away for two hours.

    Writes. A push's record is written once per failure and deleted once (one write
    of the queue's document) when it is delivered or dropped. A push fails at most
    ``max_retries + 1`` times: its first failure, then one per attempt; a refusal by
    the open breaker counts as an attempt and waits for the breaker to close, so the
    breaker paces the attempts and the retry limit ends them. So the queue is written
    at most ``PENDING * (max_retries + 2)`` times, however long the outage. The only
    other bookkeeping is the failed periodic syncs: one metadata and one history
    write per round.

    Bytes. The retry queue is one JSON document replaced whole on each write, and it
    never holds more than the pending pushes, so no write is longer than ``PENDING``
    of the longest record. That bound is quadratic in the pending pushes: here about
    90 MB handed to SQLite over the outage, 250 MB with the default breaker, when
    every push uses up its attempts. The file itself does not grow with it: the
    document's pages are rewritten in place or reused, and the write-ahead log is
    checkpointed and reused, so the database and its log grow by less than 1 KiB per
    pending push.

    The breaker's cooldown is half an hour: with the default minute each push would
    use up its attempts within a quarter of an hour and be dropped, leaving the
    periodic sync to deliver. This way the pushes are still waiting when the peer
    comes back, and the heal shows their retries delivering them and the queue
    draining, and there are fewer attempts to write, so the test is quicker. The
    bound is the same either way: the retry limit sets it, not the cooldown.
    """
    network = SimNetwork()
    directory = tmp_path / "a"
    config = SyncConfig(breaker=BreakerConfig(cooldown=1800))
    with trio.fail_after(OUTAGE + 3600):
        async with (
            eidetica.open_instance(None) as b_inst,
            open_sync(b_inst, network=network, name="b") as b_sync,
            eidetica.open_instance(directory) as a_inst,
        ):
            counted = LocalWrites(a_inst.backend, monkeypatch)
            tree = await a_inst.create_tree(name="t")
            await tree.grant(b_inst.public_key, "write")
            async with open_sync(a_inst, network=network, name="a", config=config) as a_sync:
                peer_b = await a_sync.connect(await b_sync.start_server("sim://b"))
                await a_sync.add_tree_sync(peer_b, tree.root_id)
                back = await b_sync.connect(await a_sync.start_server("sim://a"))
                await b_sync.add_tree_sync(back, tree.root_id)
                await a_sync.sync_with_peer(peer_b)
                network.partition("a", "b")
                counted.clear()
                started = trio.current_time()
                for n in range(PENDING):
                    async with tree.transaction() as op:
                        op.doc("d").set("n", n)
                await trio.testing.wait_all_tasks_blocked()
                status = await a_sync.status()
                assert len(status.retries) == PENDING  # each push failed once: none lost
                assert status.peers[peer_b].breaker == "open"
                size_pending = on_disk(directory)

                await trio.sleep(started + OUTAGE - trio.current_time())
                retry_writes = counted.writes.pop(f"{BOOKKEEPING}retry")
                retry_bytes = counted.bytes.pop(f"{BOOKKEEPING}retry")
                waiting = (await a_sync.status()).retries
                assert len(waiting) == PENDING
                assert all(item.attempts <= config.max_retries for item in waiting)
                # one write per failed attempt, and nothing else, so bounded by the limit
                assert retry_writes == sum(item.attempts for item in waiting)
                assert retry_writes <= PENDING * (config.max_retries + 2), retry_writes
                rounds = int(OUTAGE // config.periodic_sync) + 1
                assert sum(counted.writes.values()) <= 2 * rounds, counted.writes
                record = largest_retry_record(peer_b, tree.root_id, config)
                assert retry_bytes <= retry_writes * PENDING * record, retry_bytes
                growth = on_disk(directory) - size_pending
                assert growth <= PENDING * 1024, growth

                network.heal_all()
                # The breaker half-opens within one cooldown, and what waited for it goes
                # (retries due together beyond the peer's inbox wait and go again).
                await trio.sleep(config.breaker.cooldown + 64)
                status = await a_sync.status()
                assert status.retries == []
                assert status.retries_dropped == 0
                theirs = await b_inst.open_tree(tree.root_id)
                await settle(tree, theirs)
                assert (await theirs.doc("d")).get("n") == PENDING - 1
