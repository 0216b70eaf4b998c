"""The same seed replays the same run, event for event (issue 13).

Two nodes sync over a lossy, jittery sim network under trio's mock clock; every
random draw they make comes from a seeded :class:`Randomness` and the network's
from its own seed. Each run is a ``trio.run`` of its own, so both start from the same
state (clock at 0, no tasks), and the transcripts of two runs of one seed must match:
every event either node published with the mock time it came, the entries each holds
and the engine's status. Wall-clock fields (``SyncFinished.at``, the last complete
sync per tree) are in: each node's wall clock follows the mock clock.

trio itself shuffles the tasks it runs in each batch, with a generator of its own:
:func:`_replayable_trio` seeds it and makes trio order each batch by task number
first, as trio does under Hypothesis. That is trio's private switch; without it
runs of one seed drift apart in the order of events that happen in one tick.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.config import SyncConfig
from eidetica.actors.sync import Sync
from eidetica.actors.transports.sim import SimNetwork
from eidetica.protocol.randomness import Randomness

EPOCH = 1_767_225_600.0
"""The nodes' Unix time when the mock clock reads 0."""

Transcript = list[Any]


def _wall_clock() -> float:
    return EPOCH + trio.current_time()


async def _record(
    name: str,
    sync: Sync,
    transcript: Transcript,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with sync.events() as events:
        task_status.started()
        async for event in events:
            told = msgspec.to_builtins(event)
            transcript.append((round(trio.current_time(), 9), name, told))


async def _scenario(seed: int) -> Transcript:
    """Link two nodes, write on both sides while the network loses requests and a
    link is cut, and let them settle: retries, redials, timeouts and jitter all
    take part."""
    transcript: Transcript = []
    network = SimNetwork(seed=seed, timeout=5.0)
    network.delay(0.05, jitter=0.2)
    config = SyncConfig(periodic_sync=30.0, connection_check=10.0, retry_sweep=5.0)
    async with (
        eidetica.open_instance(
            None, randomness=Randomness.seeded(f"{seed}/host"), wall_clock=_wall_clock
        ) as host,
        eidetica.open_instance(
            None, randomness=Randomness.seeded(f"{seed}/client"), wall_clock=_wall_clock
        ) as client,
    ):
        tree = await host.create_tree(name="notes")
        await tree.grant(client.public_key, "write")
        async with (
            host.sync(network=network, name="host", config=config) as host_sync,
            client.sync(network=network, name="client", config=config) as client_sync,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_record, "host", host_sync, transcript)
            await nursery.start(_record, "client", client_sync, transcript)
            address = await host_sync.start_server("sim://host")
            host_key = await client_sync.connect(address)
            await client_sync.add_tree_sync(host_key, tree.root_id)
            await client_sync.wait_synced(host_key, tree.root_id)
            mirror = await client.open_tree(tree.root_id)

            network.drop(0.3)
            for n in range(4):
                async with tree.transaction() as op:
                    op.doc("log").set(f"host{n}", n)
                async with mirror.transaction() as op:
                    op.doc("log").set(f"client{n}", n)
                await trio.sleep(3)
            network.disconnect("client", "host")
            await trio.sleep(60)
            network.drop(0)
            await client_sync.wait_synced(host_key, tree.root_id)
            await trio.sleep(60)  # the retries' and periodic syncs' news settles

            for name, inst, sync in (("host", host, host_sync), ("client", client, client_sync)):
                held = await (await inst.open_tree(tree.root_id)).entries()
                transcript.append(("entries", name, [entry.id for entry in held]))
                status = msgspec.to_builtins(await sync.status())
                transcript.append(("status", name, status))
            nursery.cancel_scope.cancel()
    return transcript


@contextmanager
def _replayable_trio(seed: int) -> Iterator[None]:
    # trio's own switch, which its Hypothesis plugin flips the same way
    scheduler = trio._core._run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
        patch.setattr(scheduler, "_r", random.Random(seed))
        yield


def _run(seed: int) -> Transcript:
    with _replayable_trio(seed):
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(_scenario, seed, clock=clock)


def _kinds(transcript: Transcript) -> set[str]:
    return {entry[2]["event"] for entry in transcript if isinstance(entry[0], float)}


def test_the_same_seed_replays_the_same_run_event_for_event() -> None:
    first, second = _run(11), _run(11)
    kinds = _kinds(first)
    # The scenario reaches what randomness steers: losses, retries and redials.
    assert {"peer_linked", "peer_lost", "sync_finished", "entries_received"} <= kinds
    assert {"push_failed", "sync_failed"} & kinds
    assert first == second


def test_another_seed_makes_another_run() -> None:
    first, other = _run(11), _run(12)
    entries = [entry for entry in first if entry[0] == "entries"]
    assert entries != [entry for entry in other if entry[0] == "entries"]
    assert first != other


def test_wall_clock_fields_follow_the_nodes_clock() -> None:
    """``SyncFinished.at`` is read from the node's wall clock, not the machine's."""
    finished = [entry for entry in _run(11) if isinstance(entry[0], float)]
    stamps = [(at, told["at"]) for at, _, told in finished if told["event"] == "sync_finished"]
    assert stamps and all(stamp == EPOCH + at for at, stamp in stamps)
