"""Persisted folds: a cold read from a snapshot reads what a full refold reads."""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage import docstate, shards
from eidetica.storage.backend import Backend, OrderKey, Record, Snapshot
from eidetica.storage.crdt import MISSING, Document, lookup, materialized
from eidetica.storage.docstate import DocStates
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.shards import Shards
from eidetica.storage.sqlite import SqliteBackend
from tests.builders import STORE, build_dag, topological_order
from tests.storage.test_backend import CHAIN_AND_LATE_BRANCH
from tests.storage.test_revocation_convergence import Step, history, steps

KEY = SigningKey(bytes(range(32)))


@pytest.fixture
def snapshot_often(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Snapshot at every read that folded something, checkpoint every 2 entries, and
    keep about one key per shard."""
    monkeypatch.setattr(docstate, "SNAPSHOT_EVERY", 1)
    monkeypatch.setattr(docstate, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(shards, "KEYS_PER_SHARD", 1)
    yield


def refolded(backend: Backend, tree: str, store: str) -> Document:
    """The state of ``store`` folded from nothing, ignoring any snapshot."""
    states = DocStates(backend)
    states._resume = lambda *args: None  # type: ignore[method-assign]
    return states.state(tree, store)


def resumed_after(backend: Backend, watched: str) -> list[OrderKey | None]:
    """Spy on ``backend.store_entries``: the keys folds of ``watched`` resume after."""
    calls: list[OrderKey | None] = []
    original = backend.store_entries

    def spy(tree: str, store: str, after: OrderKey | None = None) -> Iterator[Entry]:
        if store == watched:
            calls.append(after)
        return original(tree, store, after)

    backend.store_entries = spy  # type: ignore[method-assign]
    return calls


async def deliver(entries: list[Entry], root_id: str, seed: int, node: eidetica.Instance) -> None:
    """``entries`` to ``node`` in a random parents-first order and random batches,
    reading both documents after some batches (so snapshots are written, and later
    batches bring entries that sort before them), then offered all again until
    nothing more is stored (as later syncs would)."""
    rng = random.Random(seed)
    order = topological_order(entries, rng)
    while order:
        size = rng.randint(1, 4)
        batch, order = order[:size], order[size:]
        await node.receive(root_id, [e.raw for e in batch])
        if rng.random() < 0.5:
            node.doc_states.state(root_id, "d")
    for _ in range(len(entries)):
        receipt = await node.receive(root_id, [e.raw for e in entries])
        if not receipt.stored:
            break
    if rng.random() < 0.5:
        node.doc_states.state(root_id, "d")


def check_cold_reads(backend: Backend, root_id: str) -> None:
    """A fresh cache over ``backend`` reads what a fold from nothing reads: key by key
    from the view a document is read through (in shards if resumed from a snapshot),
    and whole, as one dict."""
    kept = backend.get_snapshot(root_id, "d") is not None
    event(f"snapshot of d kept: {kept}")
    calls = resumed_after(backend, "d")
    cold = DocStates(backend)
    view = cold.view(root_id, "d")
    event(f"the cold read of d resumed after a snapshot: {calls[0] is not None}")
    event(f"the cold read of d is in shards: {isinstance(view, Shards)}")
    expected = refolded(backend, root_id, "d")
    for key in [*expected, "never-written"]:
        assert lookup(view, (key,)) == expected.get(key, MISSING)
    assert materialized(view) == expected
    read = {store: cold.state(root_id, store) for store in ("d", SETTINGS_STORE)}
    for store, state in read.items():
        assert state == refolded(backend, root_id, store)


@settings(max_examples=60, deadline=None)
@given(script=steps, seed=st.integers(0, 2**32), on_disk=st.booleans())
async def test_a_cold_read_from_any_snapshot_equals_a_full_refold(
    script: list[Step], seed: int, on_disk: bool
) -> None:
    """Histories of writes, grants and revocations by several keys, received in a
    random order with reads between, so snapshots are written, dropped by late
    arrivals, and outdated by revocations; a fresh cache over the same storage then
    reads what a fold from nothing reads. On disk, the node is closed (which writes
    snapshots of what it read) and reopened first."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as directory:
        patch.setattr(docstate, "SNAPSHOT_EVERY", 1)
        patch.setattr(docstate, "CHECKPOINT_EVERY", 2)
        patch.setattr(shards, "KEYS_PER_SHARD", 1)
        entries = await history(script)
        root_id = entries[0].id
        path = Path(directory) / "reader" if on_disk else None
        async with eidetica.open_instance(path) as reader:
            await deliver(entries, root_id, seed, reader)
            if path is None:
                check_cold_reads(reader.backend, root_id)
        if path is not None:
            async with eidetica.open_instance(path) as reopened:
                check_cold_reads(reopened.backend, root_id)


def test_a_snapshot_made_stale_by_a_late_entry_is_not_used_after_a_crash(
    tmp_path: Path, snapshot_often: None
) -> None:
    """The snapshot is taken, then an entry that sorts before it is stored, and the
    process dies before anything else happens: the reopened node reads it."""
    entries = build_dag(KEY, CHAIN_AND_LATE_BRANCH)
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "node.db")
    backend.put([Record(entry, ()) for entry in entries[:5]])
    before = DocStates(backend).state(root, STORE)
    assert backend.get_snapshot(root, STORE) is not None
    backend.put([Record(entries[5], ())])  # no cache hears of it: the process "dies"
    backend.close()
    reopened = SqliteBackend(tmp_path / "node.db")
    after = DocStates(reopened).state(root, STORE)
    assert after == refolded(reopened, root, STORE)
    assert after != before  # the late entry's write is read
    reopened.close()


def test_a_cold_read_folds_only_the_entries_after_a_valid_snapshot(
    tmp_path: Path, snapshot_often: None
) -> None:
    entries = build_dag(KEY, [[0], [1], [2], [3], [4]])
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "node.db")
    backend.put([Record(entry, ()) for entry in entries[:4]])
    DocStates(backend).state(root, STORE)
    backend.put([Record(entry, ()) for entry in entries[4:]])  # sorting after it
    backend.close()
    reopened = SqliteBackend(tmp_path / "node.db")
    calls = resumed_after(reopened, STORE)
    assert DocStates(reopened).state(root, STORE) == refolded(reopened, root, STORE)
    assert calls[0] == entries[3].key
    reopened.close()


@pytest.mark.parametrize("sharded", [True, False], ids=["format-2", "format-1"])
def test_a_snapshot_folded_under_another_verdict_is_not_used(
    snapshot_often: None, sharded: bool
) -> None:
    entries = build_dag(KEY, [[0], [1], [2]])
    root = entries[0].id
    backend = MemoryBackend()
    backend.put([Record(entry, ()) for entry in entries])
    DocStates(backend).state(root, STORE)
    snapshot = backend.get_snapshot(root, STORE)
    assert snapshot is not None
    persisted = docstate._DECODER.decode(snapshot.data)
    state = {"k1": "forged"}
    forged = docstate._ENCODER.encode(
        docstate._Sharded(persisted.applied, bytes(16), Shards.partition(state).encoded())
        if sharded
        else docstate._Whole(persisted.applied, bytes(16), state)
    )
    backend.put_snapshot(root, STORE, Snapshot(snapshot.last, forged))
    calls = resumed_after(backend, STORE)
    assert DocStates(backend).state(root, STORE) == refolded(backend, root, STORE)
    assert calls[0] is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93\x01",
        b"not msgpack at all",
        b"\x94\x03\x02\xc4\x00\x90",  # an unknown format
        b"\x94\x02\x02\xc4\x00\x93\xc4\x01\x80\xc4\x01\x80\xc4\x01\x80",  # 3 shards
    ],
)
def test_an_unreadable_snapshot_is_refolded_with_one_warning(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    entries = build_dag(KEY, [[0], [1]])
    root = entries[0].id
    backend = MemoryBackend()
    backend.put([Record(entry, ()) for entry in entries])
    backend.put_snapshot(root, STORE, Snapshot(entries[2].key, data))
    with caplog.at_level(logging.WARNING):
        state = DocStates(backend).state(root, STORE)
    assert state == refolded(backend, root, STORE) == {"k1": 1, "k2": 2}
    assert [r.message.split(":")[0] for r in caplog.records] == [
        f"snapshot of {STORE!r} in tree {root} is unreadable, refolding"
    ]


def test_a_document_too_large_to_snapshot_is_not_written(
    monkeypatch: pytest.MonkeyPatch, snapshot_often: None
) -> None:
    monkeypatch.setattr(docstate, "MAX_SNAPSHOT_BYTES", 16)
    entries = build_dag(KEY, [[0], [1], [2], [3]])
    backend = MemoryBackend()
    backend.put([Record(entry, ()) for entry in entries])
    DocStates(backend).state(entries[0].id, STORE)
    assert backend.get_snapshot(entries[0].id, STORE) is None


def test_reads_write_a_snapshot_only_every_so_many_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docstate, "SNAPSHOT_EVERY", 3)
    entries = build_dag(KEY, [[0], [1], [2], [3], [4], [5]])
    root = entries[0].id
    backend = MemoryBackend()
    states = DocStates(backend)
    written = []
    for entry in entries[1:]:
        backend.put([Record(entry, ())])
        states.stored(entry)
        states.state(root, STORE)
        snapshot = backend.get_snapshot(root, STORE)
        written.append(None if snapshot is None else snapshot.last)
    assert written == [None, None] + [entries[3].key] * 3 + [entries[6].key]


async def test_closing_a_node_snapshots_what_it_read(tmp_path: Path) -> None:
    async with eidetica.open_instance(tmp_path / "node") as node:
        tree = await node.create_tree("t")
        for i in range(3):
            async with tree.transaction() as op:
                op.doc("d").set(f"k{i}", i)
        expected = (await tree.doc("d")).to_dict()
        assert node.backend.get_snapshot(tree.root_id, "d") is None  # fewer than SNAPSHOT_EVERY
    async with eidetica.open_instance(tmp_path / "node") as node:
        calls = resumed_after(node.backend, "d")
        reopened = await node.open_tree(tree.root_id)
        assert (await reopened.doc("d")).to_dict() == expected
        assert calls == [max(e.key for e in await reopened.entries() if e.store("d"))]


def test_a_snapshot_from_before_shards_is_read_and_rewritten_in_shards_at_close(
    tmp_path: Path,
) -> None:
    """A database from before shards holds snapshots in format 1 (the whole state as
    one map): a reopened node reads from them, and closing writes them in shards."""
    entries = build_dag(KEY, [[0], [1], [2], [3]])
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "node.db")
    backend.put([Record(entry, ()) for entry in entries])
    states = DocStates(backend)
    expected = dict(states.state(root, STORE))
    digest = docstate.verdict_digest(states._judge.of_tree(root).fingerprint)
    as_before = msgspec.msgpack.encode([1, len(entries) - 1, digest, expected])
    backend.put_snapshot(root, STORE, Snapshot(entries[-1].key, as_before))
    calls = resumed_after(backend, STORE)
    reopened = DocStates(backend)
    assert reopened.view(root, STORE) == expected
    assert calls == [entries[-1].key]  # resumed from the snapshot: nothing to refold
    reopened.persist()
    rewritten = backend.get_snapshot(root, STORE)
    assert rewritten is not None
    persisted = docstate._DECODER.decode(rewritten.data)
    assert isinstance(persisted, docstate._Sharded)
    backend.close()


async def test_a_cold_read_of_a_large_document_decodes_only_the_shard_it_reads(
    tmp_path: Path,
) -> None:
    async with eidetica.open_instance(tmp_path / "node") as node:
        tree = await node.create_tree("t")
        async with tree.transaction() as op:
            for i in range(1000):
                op.doc("d").set(f"k{i}", {"value": i})
        assert (await tree.doc("d")).get("k7.value") == 7
    async with eidetica.open_instance(tmp_path / "node") as node:
        reopened = await node.open_tree(tree.root_id)
        doc = await reopened.doc("d")
        assert (doc.get("k999.value"), doc.get("k1000"), "k5" in doc) == (999, None, True)
        view = node.doc_states.view(tree.root_id, "d")
        assert isinstance(view, Shards)
        assert view.count == shards.shard_count(1000)
        assert view.loaded <= 3
        async with reopened.transaction() as op:
            op.doc("d").set("k1", "changed")
            assert op.doc("d").get("k2.value") == 2
        doc = await reopened.doc("d")
        expected = {f"k{i}": "changed" if i == 1 else {"value": i} for i in range(1000)}
        assert doc.to_dict() == expected
        assert node.doc_states.state(tree.root_id, SETTINGS_STORE)["name"] == "t"


async def test_a_snapshot_splits_a_document_that_grew_into_more_shards(
    monkeypatch: pytest.MonkeyPatch, snapshot_often: None
) -> None:
    """Shards are counted for the keys a document has when first split; once the ones
    written to are crowded, the next snapshot splits the document again."""
    monkeypatch.setattr(shards, "KEYS_PER_SHARD", 2)
    async with eidetica.open_instance(None) as node:
        tree = await node.create_tree("t")
        counts = []
        for i in range(64):
            async with tree.transaction() as op:
                op.doc("d").set(f"k{i}", i)
            assert (await tree.doc("d")).get(f"k{i}") == i
            view = node.doc_states.view(tree.root_id, "d")
            assert isinstance(view, Shards)
            counts.append(view.count)
        assert counts == sorted(counts)
        assert counts[0] == 1
        assert counts[-1] >= 64 // (shards.CROWDED * 2)
        cold = DocStates(node.backend).view(tree.root_id, "d")
        assert isinstance(cold, Shards)
        assert cold.count == counts[-1]
        assert materialized(cold) == {f"k{i}": i for i in range(64)}
