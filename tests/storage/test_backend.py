"""The backend contract, held against memory and SQLite alike."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eidetica.errors import StorageError
from eidetica.protocol.dagview import walk
from eidetica.protocol.entry import Entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage import sqlite as sqlite_module
from eidetica.storage.backend import Backend, Record, Snapshot
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.sqlite import SCHEMA_VERSION, SqliteBackend
from eidetica.storage.treeview import TreeView
from tests.builders import STORE, build_dag, build_entries, dag_shapes, expected_tips

KEY = SigningKey(bytes(range(32)))
SHAPE = [[0], [1], [1], [2, 3], [4], [4]]  # a fork after 1, merged at 4, forked again
CHAIN_AND_LATE_BRANCH = [[0], [1], [2], [3], [1]]
"""A chain to height 4, then entry 5, a branch off entry 1 at height 2: it sorts before
entries 3 and 4 though it is stored after them."""


def records(entries: list[Entry]) -> list[Record]:
    return [Record(entry, ()) for entry in entries]


def expected_store_tips(entries: list[Entry]) -> list[str]:
    writers = [e for e in entries if e.store(STORE) is not None]
    referenced = {p for e in writers for p in e.store(STORE).parents}  # type: ignore[union-attr]
    return sorted(e.id for e in writers if e.id not in referenced)


def test_put_is_idempotent_and_reports_new_ids(backend: Backend) -> None:
    entries = build_dag(KEY, SHAPE)
    assert backend.put(records(entries[:3])) == [e.id for e in entries[:3]]
    assert backend.put(records(entries)) == [e.id for e in entries[3:]]
    assert backend.put(records(entries)) == []
    assert backend.tips(entries[0].id) == expected_tips(entries)


def test_reads_return_what_was_stored(backend: Backend) -> None:
    entries = build_dag(KEY, SHAPE)
    root = entries[0].id
    backend.put(records(entries))
    assert backend.get(entries[3].id) == entries[3]
    assert backend.get("0" * 64) is None
    assert backend.has([entries[1].id, "0" * 64]) == {entries[1].id}
    assert backend.trees() == [root]
    meta = backend.meta([entries[4].id])[entries[4].id]
    assert (meta.tree, meta.height, meta.parents) == (root, 3, entries[4].parents)
    assert meta.stores == (STORE,)
    listed = list(backend.tree_entries(root))
    assert sorted(listed, key=lambda e: e.key) == listed
    assert {e.id for e in listed} == {e.id for e in entries}


def test_store_entries_resume_after_a_key(backend: Backend) -> None:
    entries = build_dag(KEY, SHAPE)
    backend.put(records(entries))
    writers = sorted((e for e in entries if e.store(STORE)), key=lambda e: e.key)
    assert list(backend.store_entries(entries[0].id, STORE)) == writers
    assert list(backend.store_entries(entries[0].id, STORE, after=writers[2].key)) == writers[3:]
    assert list(backend.store_entries(entries[0].id, "absent")) == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=dag_shapes(), seed=st.integers(0, 2**32))
def test_tips_are_right_in_any_arrival_order(
    tmp_path: Path, shape: list[list[int]], seed: int
) -> None:
    entries = build_dag(KEY, shape)
    shuffled = entries[:]
    random.Random(seed).shuffle(shuffled)
    db = tmp_path / f"{seed}.db"
    db.unlink(missing_ok=True)
    for backend in (MemoryBackend(), SqliteBackend(db)):
        for entry in shuffled:  # one at a time: children often before their parents
            backend.put([Record(entry, ())])
        root = entries[0].id
        assert backend.tips(root) == expected_tips(entries)
        assert backend.store_tips(root, STORE) == expected_store_tips(entries)
        backend.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=dag_shapes(), seed=st.integers(0, 2**32), data=st.data())
def test_tips_written_per_batch_are_right_after_reopen(
    tmp_path: Path, shape: list[list[int]], seed: int, data: st.DataObject
) -> None:
    """SQLite writes a batch's tips once, as they end up: in batches of any size, in
    any arrival order, a reopened file (which reads them from the table) agrees."""
    entries = build_dag(KEY, shape)
    shuffled = entries[:]
    random.Random(seed).shuffle(shuffled)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(shuffled)), max_size=len(shuffled))))
    db = tmp_path / f"{seed}-batches.db"
    db.unlink(missing_ok=True)
    backend = SqliteBackend(db)
    for start, end in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
        backend.put(records(shuffled[start:end] + shuffled[start:end]))  # twice: idempotent
    backend.close()
    reopened = SqliteBackend(db)
    root = entries[0].id
    assert reopened.tips(root) == expected_tips(entries)
    assert reopened.store_tips(root, STORE) == expected_store_tips(entries)
    assert reopened.put(records(entries)) == []
    reopened.close()


def _copy_as_killed(path: Path, to: Path) -> Path:
    """The files of an open database as a ``kill -9`` would leave them: the database
    and its WAL, without the lock or the shared memory."""
    to.mkdir()
    for suffix in ("", "-wal"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            copy = to / (path.name + suffix)
            copy.touch(mode=0o600)
            copy.write_bytes(source.read_bytes())
    return to / path.name


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=dag_shapes(), seed=st.integers(0, 2**32), lag=st.integers(1, 6), data=st.data())
def test_tips_the_table_lags_are_replayed_after_a_kill(
    tmp_path: Path, shape: list[list[int]], seed: int, lag: int, data: st.DataObject
) -> None:
    """The tips table is written every ``TIPS_LAG`` entries and when a write touches
    ``dangling``; a file left by a kill after any write is replayed on opening to the
    tips the memory backend holds after the same writes."""
    entries = build_dag(KEY, shape)
    shuffled = entries[:]
    random.Random(seed).shuffle(shuffled)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(shuffled) - 1), max_size=len(shuffled))))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    killed_after = data.draw(st.integers(1, len(batches)))
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    oracle = MemoryBackend()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_module, "TIPS_LAG", lag)
        backend = SqliteBackend(directory / "b.db")
        for batch in batches[:killed_after]:
            backend.put(records(batch))
            oracle.put(records(batch))
        reopened = SqliteBackend(_copy_as_killed(directory / "b.db", directory / "killed"))
        backend.close()
    root = entries[0].id
    assert reopened.tips(root) == oracle.tips(root)
    assert reopened.store_tips(root, STORE) == oracle.store_tips(root, STORE)
    for batch in batches[killed_after:]:
        reopened.put(records(batch))
    assert reopened.tips(root) == expected_tips(entries)
    assert reopened.store_tips(root, STORE) == expected_store_tips(entries)
    reopened.close()


def test_a_commit_writes_no_tips_until_they_are_due(tmp_path: Path) -> None:
    entries = build_dag(KEY, [[0], [1], [2], [3], [4]])  # a chain of six
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:2]))
    backend.close()  # the table holds entry 1 as the tip
    backend = SqliteBackend(tmp_path / "b.db")
    for entry in entries[2:]:
        backend.put(records([entry]))
    on_disk = sqlite3.connect(tmp_path / "b.db")
    assert [row[0].hex() for row in on_disk.execute("SELECT id FROM tips WHERE dag = 1")] == [
        entries[1].id
    ]
    backend.close()
    assert [row[0].hex() for row in on_disk.execute("SELECT id FROM tips WHERE dag = 1")] == [
        entries[5].id
    ]
    on_disk.close()


@given(shape=dag_shapes(), data=st.data())
def test_walk_matches_reachability(shape: list[list[int]], data: st.DataObject) -> None:
    entries = build_dag(KEY, shape)
    backend = MemoryBackend()
    backend.put(records(entries))
    ids = [e.id for e in entries]
    heads = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3))
    stop = data.draw(st.lists(st.sampled_from(ids), max_size=3))
    parents = {e.id: e.parents for e in entries}

    def reach(start: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(parents[current])
        return seen

    found = walk(TreeView(backend, entries[0].id), heads, stop)
    assert set(found) == reach(heads) - reach(stop)
    heights = {e.id: e.height for e in entries}
    assert [heights[i] for i in found] == sorted(heights[i] for i in found)


def test_sqlite_batch_is_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = build_dag(KEY, SHAPE)
    backend = SqliteBackend(tmp_path / "b.db")
    insert = SqliteBackend._insert
    calls = 0

    def failing_fourth_insert(self: SqliteBackend, batch: object, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise sqlite3.OperationalError("disk I/O error")
        insert(self, batch, record)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteBackend, "_insert", failing_fourth_insert)
    with pytest.raises(StorageError, match="disk I/O error"):
        backend.put(records(entries))
    monkeypatch.undo()
    assert backend.has(e.id for e in entries) == set()
    assert backend.tips(entries[0].id) == []
    assert len(backend.put(records(entries))) == len(entries)
    backend.close()


def test_trees_lists_only_stored_roots(backend: Backend) -> None:
    entries = build_dag(KEY, SHAPE)
    backend.put(records(entries[1:]))  # everything but the root
    assert backend.trees() == []
    backend.put(records(entries[:1]))
    assert backend.trees() == [entries[0].id]


def test_sqlite_rollback_of_a_batch_extending_a_dag_keeps_caches_true(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build_dag(KEY, SHAPE)
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:3]))
    root = entries[0].id
    tips, store_tips = backend.tips(root), backend.store_tips(root, STORE)

    insert = SqliteBackend._insert
    calls = 0

    def fail_on_second(self: SqliteBackend, batch: object, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sqlite3.OperationalError("disk full")
        insert(self, batch, record)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteBackend, "_insert", fail_on_second)
    with pytest.raises(StorageError):
        backend.put(records(entries[3:]))
    monkeypatch.undo()
    assert backend.tips(root) == tips
    assert backend.store_tips(root, STORE) == store_tips
    assert backend.meta([entries[3].id]) == {}
    assert backend.put(records(entries[3:])) == [e.id for e in entries[3:]]
    assert backend.tips(root) == expected_tips(entries)
    backend.close()
    reopened = SqliteBackend(tmp_path / "b.db")
    assert reopened.tips(root) == expected_tips(entries)
    reopened.close()


def test_local_values_are_replaced_kept_apart_and_survive_reopen(
    backend: Backend, tmp_path: Path
) -> None:
    assert backend.get_local("sync_tree") is None
    backend.set_local("sync_tree", "first")
    backend.set_local("sync_tree", "second")
    backend.set_local("other", "")
    assert backend.get_local("sync_tree") == "second"
    assert backend.get_local("other") == ""
    assert backend.get_local("schema") is None  # SQLite's own meta rows are not local values
    if isinstance(backend, SqliteBackend):
        backend.close()
        reopened = SqliteBackend(tmp_path / "backend.db")
        assert reopened.get_local("sync_tree") == "second"
        assert reopened.get_local("other") == ""
        reopened.close()


def test_a_backend_is_healthy_until_closed(backend: Backend) -> None:
    assert backend.healthy()
    backend.close()
    assert not backend.healthy()


def test_a_snapshot_is_kept_until_an_entry_sorting_at_or_before_it_is_stored(
    backend: Backend,
) -> None:
    entries = build_dag(KEY, [*CHAIN_AND_LATE_BRANCH, [4]])
    root = entries[0].id
    backend.put(records(entries[:4]))
    assert backend.get_snapshot(root, STORE) is None
    snapshot = Snapshot(entries[3].key, b"state at 3")
    backend.put_snapshot(root, STORE, snapshot)
    backend.put_snapshot(root, "other", Snapshot(entries[1].key, b"another store"))
    assert backend.get_snapshot(root, STORE) == snapshot
    backend.put(records([entries[4], entries[6]]))  # both sort after entry 3
    assert backend.get_snapshot(root, STORE) == snapshot
    replaced = Snapshot(entries[6].key, b"state at 6")
    backend.put_snapshot(root, STORE, replaced)
    assert backend.get_snapshot(root, STORE) == replaced
    backend.put(records([entries[5]]))  # height 2: sorts before entries 3, 4 and 6
    assert backend.get_snapshot(root, STORE) is None
    assert backend.get_snapshot(root, "other") == Snapshot(entries[1].key, b"another store")


def test_sqlite_snapshots_and_their_dropping_survive_reopen(tmp_path: Path) -> None:
    entries = build_dag(KEY, CHAIN_AND_LATE_BRANCH)
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:5]))
    backend.put_snapshot(root, STORE, Snapshot(entries[4].key, b"state at 4"))
    backend.close()
    reopened = SqliteBackend(tmp_path / "b.db")
    assert reopened.get_snapshot(root, STORE) == Snapshot(entries[4].key, b"state at 4")
    reopened.put(records(entries[5:]))  # the late branch: the snapshot is stale
    reopened.close()
    again = SqliteBackend(tmp_path / "b.db")
    assert again.get_snapshot(root, STORE) is None
    again.close()


def test_sqlite_a_rolled_back_batch_keeps_the_snapshot_it_would_have_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build_dag(KEY, [*CHAIN_AND_LATE_BRANCH, [5]])
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:5]))
    snapshot = Snapshot(entries[4].key, b"state at 4")
    backend.put_snapshot(root, STORE, snapshot)
    insert = SqliteBackend._insert

    def fail_after_the_branch(self: SqliteBackend, batch: object, record: Record) -> None:
        if record.entry.id == entries[6].id:
            raise sqlite3.OperationalError("disk full")
        insert(self, batch, record)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteBackend, "_insert", fail_after_the_branch)
    with pytest.raises(StorageError):
        backend.put(records(entries[5:]))  # entry 5 drops the snapshot, then the batch fails
    monkeypatch.undo()
    assert backend.get_snapshot(root, STORE) == snapshot
    backend.put(records(entries[5:6]))  # the cache of snapshot keys is still true
    assert backend.get_snapshot(root, STORE) is None
    backend.close()


def _downgrade_to_schema_2(path: Path) -> None:
    """Make ``path`` look like a file a version 2 build wrote: no snapshots table."""
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE snapshots")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.close()


def test_sqlite_a_schema_2_file_opens_and_is_upgraded(tmp_path: Path) -> None:
    entries = build_dag(KEY, CHAIN_AND_LATE_BRANCH)
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:5]))
    backend.set_local("sync_tree", root)
    backend.close()
    _downgrade_to_schema_2(tmp_path / "b.db")
    upgraded = SqliteBackend(tmp_path / "b.db")
    assert upgraded.tips(root) == [entries[4].id]
    assert upgraded.get_local("sync_tree") == root
    assert upgraded.get_snapshot(root, STORE) is None
    upgraded.put_snapshot(root, STORE, Snapshot(entries[4].key, b"state at 4"))
    upgraded.put(records(entries[5:]))
    assert upgraded.get_snapshot(root, STORE) is None
    upgraded.close()
    db = sqlite3.connect(tmp_path / "b.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.close()


def test_sqlite_a_schema_3_file_opens_and_its_tips_then_lag_safely(tmp_path: Path) -> None:
    entries = build_dag(KEY, CHAIN_AND_LATE_BRANCH)
    root = entries[0].id
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries[:3]))
    backend.close()
    db = sqlite3.connect(tmp_path / "b.db")
    with db:  # a version 3 build kept the tips table whole and had no tips_through
        db.execute("DELETE FROM meta WHERE key = 'tips_through'")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    db.close()
    upgraded = SqliteBackend(tmp_path / "b.db")
    assert upgraded.tips(root) == [entries[2].id]
    upgraded.put(records(entries[3:]))  # the table lags these
    killed = SqliteBackend(_copy_as_killed(tmp_path / "b.db", tmp_path / "killed"))
    assert killed.tips(root) == expected_tips(entries)
    killed.close()
    upgraded.close()
    db = sqlite3.connect(tmp_path / "b.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.close()


@pytest.mark.parametrize("version", ["1", "99", "x"])
def test_sqlite_a_schema_it_cannot_upgrade_is_refused(tmp_path: Path, version: str) -> None:
    SqliteBackend(tmp_path / "b.db").close()
    db = sqlite3.connect(tmp_path / "b.db")
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
    db.close()
    with pytest.raises(StorageError, match=f"schema {version} is not {SCHEMA_VERSION}"):
        SqliteBackend(tmp_path / "b.db")


def test_has_answers_for_more_ids_than_one_query_asks(tmp_path: Path) -> None:
    """SQLite asks about ids in chunks (and the recent cache first): a reopened file,
    whose cache is empty, still answers for all of them."""
    entries = build_entries(1_200)
    stranger = [f"{n:064x}" for n in range(700)]
    backend = SqliteBackend(tmp_path / "b.db")
    backend.put(records(entries))
    backend.close()
    reopened = SqliteBackend(tmp_path / "b.db")
    asked = [e.id for e in entries] + stranger
    random.Random(7).shuffle(asked)
    assert reopened.has(asked) == {e.id for e in entries}
    reopened.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("damage", ["newer schema", "not a database"])
def test_sqlite_a_refused_open_lets_go_of_the_file(tmp_path: Path, damage: str) -> None:
    """An open that fails keeps no lock and no descriptor: asked again in the same
    process it fails for the same reason, not as "in use by another node"."""
    path = tmp_path / "b.db"
    if damage == "newer schema":
        SqliteBackend(path).close()
        db = sqlite3.connect(path)
        with db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
        db.close()
        reason = "schema 99 is not"
    else:
        path.write_bytes(b"this is not a database at all, " * 64)
        reason = "cannot open SQLite database"
    before = _open_descriptors()
    for _ in range(2):
        with pytest.raises(StorageError, match=reason):
            SqliteBackend(path)
    assert _open_descriptors() == before
