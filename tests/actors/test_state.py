"""SyncState: peers, relationships, cursors, metadata, history and retries kept in the
sync tree, read back after the node restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.state import (
    FLUSH_EVERY,
    SYNC_TREE_KEY,
    SYNC_TREE_NAME,
    Cursor,
    HistoryRecord,
    PeerRecord,
    RetryRecord,
    SyncMetadata,
    SyncState,
)
from eidetica.errors import InvalidValue, StorageError, SyncError
from eidetica.protocol.keys import SigningKey

ALICE = SigningKey(bytes(range(32))).public_key
BOB = SigningKey(bytes(range(1, 33))).public_key
TREE_A = "a" * 64
TREE_B = "b" * 64


async def entry_count(state: SyncState) -> int:
    return len(await state.tree.entries())


async def test_everything_reads_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "node"
    retry = RetryRecord(peer=ALICE, tree=TREE_A, entry_ids=("e1", "e2"), attempts=3)
    async with eidetica.open_instance(path) as inst:
        state = await SyncState.open(inst)
        root_id = state.tree.root_id
        await state.add_peer(ALICE, "http://127.0.0.1:9000")
        await state.add_peer(ALICE, "ws://127.0.0.1:9001")
        await state.add_peer(BOB)
        await state.add_relationship(ALICE, TREE_A)
        await state.add_relationship(ALICE, TREE_B)
        await state.set_cursor(ALICE, TREE_A, ["t2", "t1"], now=1234.5, synced=7)
        await state.record_sync(ALICE, ok=True, entries=7, duration_ms=30.0, tree=TREE_A, at=5.0)
        await state.put_retry("r1", retry)

    async with eidetica.open_instance(path) as inst:
        state = await SyncState.open(inst)
        assert state.tree.root_id == root_id
        assert await state.peers() == {
            ALICE: PeerRecord(
                ALICE, ("http://127.0.0.1:9000", "ws://127.0.0.1:9001"), frozenset({TREE_A, TREE_B})
            ),
            BOB: PeerRecord(BOB),
        }
        assert await state.tree_peers(TREE_A) == [ALICE]
        assert await state.cursor(ALICE, TREE_A) == Cursor(("t1", "t2"), 1234.5, 7)
        assert await state.cursor(ALICE, TREE_B) is None
        assert await state.metadata(ALICE) == SyncMetadata(1, 0, 7, 30.0)
        assert await state.history() == [HistoryRecord(ALICE, True, 7, 30.0, TREE_A, "pull", 5.0)]
        assert await state.retries() == {"r1": retry}


async def test_sync_tree_is_found_by_the_local_key_not_by_name(
    inst: eidetica.Instance,
) -> None:
    impostor = await inst.create_tree(name="_sync")
    state = await SyncState.open(inst)
    assert state.tree != impostor
    assert inst.backend.get_local(SYNC_TREE_KEY) == state.tree.root_id
    assert (await SyncState.open(inst)).tree == state.tree


async def test_a_local_key_naming_a_missing_tree_is_a_storage_error(
    inst: eidetica.Instance,
) -> None:
    inst.backend.set_local(SYNC_TREE_KEY, "0" * 64)
    with pytest.raises(StorageError, match="missing"):
        await SyncState.open(inst)


async def test_adding_a_known_peer_or_address_again_writes_nothing(
    inst: eidetica.Instance,
) -> None:
    state = await SyncState.open(inst)
    await state.add_peer(ALICE, "sim://alice")
    await state.add_relationship(ALICE, TREE_A)
    before = await entry_count(state)
    await state.add_peer(ALICE, "sim://alice")
    await state.add_peer(ALICE)
    await state.add_relationship(ALICE, TREE_A)
    assert await entry_count(state) == before
    assert await state.peer(ALICE) == PeerRecord(ALICE, ("sim://alice",), frozenset({TREE_A}))


async def test_a_relationship_needs_a_known_peer(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    with pytest.raises(SyncError, match="unknown peer"):
        await state.add_relationship(ALICE, TREE_A)
    assert await state.peers() == {}


async def test_remove_peer_forgets_its_relationships_cursors_and_retries(
    inst: eidetica.Instance,
) -> None:
    state = await SyncState.open(inst)
    for peer in (ALICE, BOB):
        await state.add_peer(peer, f"sim://{peer[-4:]}")
        await state.add_relationship(peer, TREE_A)
        await state.set_cursor(peer, TREE_A, ["t1"], now=1.0, synced=1)
        await state.put_retry(f"retry-{peer}", RetryRecord(peer, TREE_A, ("e1",), 1))
    await state.record_sync(ALICE, ok=True, entries=1, duration_ms=5.0)

    before = await entry_count(state)
    await state.remove_peer(ALICE)
    assert await entry_count(state) == before + 1
    assert list(await state.peers()) == [BOB]
    assert await state.cursor(ALICE, TREE_A) is None
    assert await state.cursor(BOB, TREE_A) is not None
    assert list(await state.retries()) == [f"retry-{BOB}"]
    assert (await state.metadata(ALICE)).successful_sync_count == 1  # the past stays
    await state.remove_peer(ALICE)
    assert await entry_count(state) == before + 1  # nothing left to remove


async def test_remove_relationship_drops_only_that_tree(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    await state.add_peer(ALICE)
    for tree in (TREE_A, TREE_B):
        await state.add_relationship(ALICE, tree)
        await state.set_cursor(ALICE, tree, ["t1"], now=1.0, synced=1)
        await state.put_retry(f"retry-{tree[0]}", RetryRecord(ALICE, tree, ("e1",), 0))
    await state.remove_relationship(ALICE, TREE_A)
    assert await state.peer(ALICE) == PeerRecord(ALICE, (), frozenset({TREE_B}))
    assert await state.tree_peers(TREE_A) == []
    assert await state.cursor(ALICE, TREE_A) is None
    assert await state.cursor(ALICE, TREE_B) is not None
    assert list(await state.retries()) == ["retry-b"]


async def test_cursor_replaces_tips_and_adds_up_synced_entries(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    await state.set_cursor(ALICE, TREE_A, ["t1"], now=10.0, synced=3)
    cursor = await state.set_cursor(ALICE, TREE_A, ["t3", "t2", "t3"], now=20.0, synced=4)
    assert cursor == Cursor(("t2", "t3"), 20.0, 7)
    assert await state.cursor(ALICE, TREE_A) == cursor


async def test_metadata_counts_outcomes_and_averages_every_duration(
    inst: eidetica.Instance,
) -> None:
    state = await SyncState.open(inst)
    assert await state.metadata(ALICE) == SyncMetadata()
    await state.record_sync(ALICE, ok=True, entries=5, duration_ms=10.0)
    await state.record_sync(ALICE, ok=False, entries=1, duration_ms=40.0)
    await state.record_sync(ALICE, ok=True, entries=0, duration_ms=25.0)
    assert await state.metadata(ALICE) == SyncMetadata(2, 1, 6, 25.0)
    assert await state.metadata(BOB) == SyncMetadata()
    with pytest.raises(InvalidValue):
        await state.record_sync(ALICE, ok=True, entries=0, duration_ms=float("nan"))


async def test_sync_bookkeeping_signs_no_entries(inst: eidetica.Instance) -> None:
    """Cursors, metadata, history and retries are node-local records: a thousand
    syncs leave the sync tree as it was. Peers and relationships are still entries."""
    state = await SyncState.open(inst)
    await state.add_peer(ALICE)
    before = await entry_count(state)
    for i in range(1000):
        await state.record_sync(ALICE, ok=True, entries=1, duration_ms=1.0)
        await state.set_cursor(ALICE, TREE_A, [f"{i:064x}"], now=float(i), synced=1)
        await state.put_retry(f"r{i}", RetryRecord(ALICE, TREE_A, ("e1",), 0))
        await state.drop_retry(f"r{i}")
    assert await entry_count(state) == before
    assert (await state.metadata(ALICE)).successful_sync_count == 1000
    assert len(await state.history()) == state.max_history
    await state.add_relationship(ALICE, TREE_A)
    assert await entry_count(state) == before + 1


async def test_what_an_earlier_version_kept_in_the_sync_tree_is_read_once(
    inst: eidetica.Instance,
) -> None:
    """A node upgraded from the version that kept cursors, metadata, history and
    retries in its sync tree keeps its peers, relationships, cursors and retry queue."""
    tree = await inst.create_tree(SYNC_TREE_NAME)  # as the earlier version wrote it
    inst.backend.set_local(SYNC_TREE_KEY, tree.root_id)
    async with tree.transaction() as op:
        op.doc("peers").set((ALICE,), {"addresses": ["ws://a"], "sync_trees": [TREE_A]})
        op.doc("retry").set(
            ("r1",), {"attempts": 2, "entry_ids": ["e1"], "peer": ALICE, "tree": TREE_A}
        )
        state_doc = op.doc("sync_state")
        state_doc.set(
            ("cursors", ALICE, TREE_A),
            {"last_sync_time": 1.0, "last_synced_tips": ["t"], "total_synced_count": 3},
        )
        state_doc.set(
            ("metadata", ALICE),
            {
                "average_sync_duration_ms": 2.0,
                "failed_sync_count": 0,
                "successful_sync_count": 1,
                "total_entries_synced": 3,
            },
        )
        state_doc.set(
            ("history", f"{0:020d}"), {"duration_ms": 2.0, "entries": 3, "ok": True, "peer": ALICE}
        )
    state = await SyncState.open(inst)
    assert await state.peers() == {ALICE: PeerRecord(ALICE, ("ws://a",), frozenset({TREE_A}))}
    assert await state.retries() == {"r1": RetryRecord(ALICE, TREE_A, ("e1",), 2)}
    assert await state.cursor(ALICE, TREE_A) == Cursor(("t",), 1.0, 3)
    assert (await state.metadata(ALICE)).total_entries_synced == 3
    assert len(await state.history()) == 1
    await state.drop_retry("r1")
    assert await (await SyncState.open(inst)).retries() == {}  # copied once, not again


async def test_history_keeps_the_newest_max_history(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst, max_history=3)
    for entries in range(5):
        await state.record_sync(ALICE, ok=True, entries=entries, duration_ms=1.0)
    assert [record.entries for record in await state.history()] == [2, 3, 4]
    assert (await state.metadata(ALICE)).successful_sync_count == 5

    state.flush()  # history is written "soon": another reader sees it once written
    smaller = SyncState(state.tree, max_history=2)
    await smaller.record_sync(BOB, ok=False, entries=9, duration_ms=1.0)
    assert [(r.peer, r.entries) for r in await smaller.history()] == [(ALICE, 4), (BOB, 9)]


async def test_drop_retry_forgets_only_that_retry(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    first = RetryRecord(ALICE, TREE_A, ("e1",), 0)
    await state.put_retry("r1", first)
    await state.put_retry("r2", RetryRecord(BOB, TREE_B, ("e2", "e3"), 1))
    await state.put_retry("r2", RetryRecord(BOB, TREE_B, ("e2", "e3"), 2))
    await state.drop_retry("r2")
    await state.drop_retry("absent")
    assert await state.retries() == {"r1": first}


async def test_concurrent_writes_are_not_lost(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    await state.add_peer(ALICE)
    trees = [f"{number:064x}" for number in range(8)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for tree in trees:
                nursery.start_soon(state.add_relationship, ALICE, tree)
                nursery.start_soon(state.record_sync, ALICE, True, 1, 1.0)
    assert await state.tree_peers(trees[0]) == [ALICE]
    assert (await state.peer(ALICE)) == PeerRecord(ALICE, (), frozenset(trees))
    assert (await state.metadata(ALICE)).successful_sync_count == len(trees)
    assert len(await state.history()) == len(trees)


async def test_a_malformed_record_is_a_storage_error(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    async with state.tree.transaction() as op:
        op.doc("peers").set((ALICE,), {"addresses": "not a list"})
    with pytest.raises(StorageError, match="PeerDoc at peers/"):
        await state.peers()


async def test_max_history_must_keep_at_least_one(inst: eidetica.Instance) -> None:
    with pytest.raises(SyncError, match="max_history"):
        await SyncState.open(inst, max_history=0)


async def test_history_says_when_which_tree_and_which_way(inst: eidetica.Instance) -> None:
    state = await SyncState.open(inst)
    await state.record_sync(ALICE, ok=True, entries=2, duration_ms=5.0, tree=TREE_A, at=100.0)
    await state.record_push(ALICE, TREE_B, entries=3)
    await state.record_served(BOB, TREE_A)
    pulled, pushed, served = await state.history()
    assert pulled == HistoryRecord(ALICE, True, 2, 5.0, TREE_A, "pull", 100.0)
    assert (pushed.direction, pushed.tree, pushed.entries) == ("push", TREE_B, 3)
    assert (served.direction, served.peer, served.tree) == ("served", BOB, TREE_A)
    assert pushed.at > 0 and served.at > 0
    alice = await state.metadata(ALICE)
    assert (alice.successful_sync_count, alice.pushes, alice.entries_pushed) == (1, 1, 3)
    assert (await state.metadata(BOB)).requests_served == 1


async def test_counts_and_cursors_of_a_burst_are_written_once_then_on_flush(
    inst: eidetica.Instance, autojump_clock: trio.testing.MockClock
) -> None:
    state = await SyncState.open(inst)
    writes: list[str] = []
    set_local = inst.backend.set_local

    def counted(key: str, value: str) -> None:
        writes.append(key)
        set_local(key, value)

    inst.backend.set_local = counted  # type: ignore[method-assign]
    await state.record_push(ALICE, TREE_A, 1)  # the first of a burst goes at once
    for _ in range(100):
        await state.record_push(ALICE, TREE_A, 1)
        await state.set_cursor(ALICE, TREE_A, ["t"], 1.0, 1)
    assert sorted(writes) == ["sync/history", "sync/metadata"]
    assert (await state.metadata(ALICE)).pushes == 101  # the reader sees them at once
    await trio.sleep(FLUSH_EVERY)
    await state.record_push(ALICE, TREE_A, 1)  # a write after the wait goes out
    assert sorted(writes[2:]) == ["sync/cursors", "sync/history", "sync/metadata"]
    stored = json.loads(inst.backend.get_local("sync/metadata") or "{}")
    assert stored[ALICE]["pushes"] == 102
    await state.put_retry("r1", RetryRecord(ALICE, TREE_A, ("e1",), 1))
    assert writes[-1] == "sync/retry"  # retries are written at once
