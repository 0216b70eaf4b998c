"""The writer: big batches stored in a worker thread, in chunks, while the loop reads
what was stored before them; small ones, and every one under a MockClock, on the loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio

from eidetica.errors import StorageError
from eidetica.protocol.entry import Entry
from eidetica.storage import sqlite, writer
from eidetica.storage.backend import Record, Snapshot
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.sqlite import SqliteBackend
from eidetica.storage.writer import CHUNK, THREAD_FROM, Writer
from tests.builders import STORE, build_entries, expected_tips


def records(entries: Sequence[Entry]) -> list[Record]:
    return [Record(entry, ()) for entry in entries]


class Told:
    """What a writer told ``on_stored``, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, list[str]]] = []

    def __call__(self, chunk: Sequence[Record], added: list[str]) -> None:
        self.chunks.append((len(chunk), added))


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> SqliteBackend:
    return SqliteBackend(tmp_path / "w.db")


def threads_of_writes(
    backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, int]]:
    """(thread ident, records) of every ``write`` the backend runs from now on."""
    seen: list[tuple[int, int]] = []
    write = backend.write

    def spied(chunk: Sequence[Record]) -> Callable[[], list[str]]:
        seen.append((threading.get_ident(), len(chunk)))
        return write(chunk)

    monkeypatch.setattr(backend, "write", spied)
    return seen


async def test_a_big_batch_is_stored_in_a_worker_thread_a_chunk_at_a_time(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build_entries(2 * CHUNK + 10)
    seen = threads_of_writes(sqlite_backend, monkeypatch)
    told = Told()
    added = await Writer(sqlite_backend).put(records(entries), told)
    assert added == [e.id for e in entries]
    assert [count for _, count in seen] == [CHUNK, CHUNK, 10]
    assert threading.get_ident() not in {thread for thread, _ in seen}
    assert told.chunks == [
        (CHUNK, added[:CHUNK]),
        (CHUNK, added[CHUNK : 2 * CHUNK]),
        (10, added[2 * CHUNK :]),
    ]
    assert sqlite_backend.tips(entries[0].id) == expected_tips(entries)
    sqlite_backend.close()


async def test_a_small_batch_is_stored_on_the_loop(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build_entries(THREAD_FROM - 1)
    seen = threads_of_writes(sqlite_backend, monkeypatch)
    await Writer(sqlite_backend).put(records(entries), Told())
    assert seen == [(threading.get_ident(), THREAD_FROM - 1)]
    sqlite_backend.close()


async def test_under_a_mock_clock_every_batch_is_stored_on_the_loop(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    entries = build_entries(CHUNK + 1)
    seen = threads_of_writes(sqlite_backend, monkeypatch)
    await Writer(sqlite_backend).put(records(entries), Told())
    assert seen == [(threading.get_ident(), CHUNK + 1)]
    sqlite_backend.close()


async def test_the_loop_reads_the_state_before_a_write_until_it_is_settled(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a chunk is being written in a thread, and even once the thread has
    committed it, the loop reads what was stored before: its tips, its entries, its
    counts; and a snapshot, which that write could not drop, is refused."""
    entries = build_entries(THREAD_FROM + 4)
    first, rest = entries[:2], entries[2:]
    sqlite_backend.put(records(first))
    root = entries[0].id
    committed, go_on = threading.Event(), threading.Event()
    write = sqlite_backend.write

    def held_after_commit(chunk: Sequence[Record]) -> Callable[[], list[str]]:
        settle = write(chunk)
        committed.set()
        go_on.wait()
        return settle

    monkeypatch.setattr(sqlite_backend, "write", held_after_commit)
    the_writer = Writer(sqlite_backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_writer.put, records(rest), Told())
        await trio.to_thread.run_sync(committed.wait)
        assert the_writer.busy()
        assert sqlite_backend.tips(root) == [first[-1].id]
        assert sqlite_backend.has(e.id for e in rest) == set()
        assert sqlite_backend.get(rest[-1].id) is None
        assert [e.id for e in sqlite_backend.tree_entries(root)] == [e.id for e in first]
        assert sqlite_backend.store_tips(root, STORE) == [first[-1].id]
        snapshot = Snapshot(first[-1].key, b"state")
        assert sqlite_backend.put_snapshot(root, STORE, snapshot) is False
        go_on.set()
    assert not the_writer.busy()
    assert sqlite_backend.tips(root) == [entries[-1].id]
    assert sqlite_backend.has(e.id for e in rest) == {e.id for e in rest}
    assert sqlite_backend.put_snapshot(root, STORE, snapshot) is True
    sqlite_backend.close()


async def test_a_failed_thread_write_stores_nothing_and_the_next_one_works(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build_entries(THREAD_FROM + 1)
    insert = SqliteBackend._insert
    calls = 0

    def failing_tenth(self: SqliteBackend, batch: object, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise OSError("disk on fire")
        insert(self, batch, record)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteBackend, "_insert", failing_tenth)
    the_writer = Writer(sqlite_backend)
    told = Told()
    with pytest.raises(OSError, match="disk on fire"):
        await the_writer.put(records(entries), told)
    monkeypatch.undo()
    assert told.chunks == []
    assert not the_writer.busy()
    assert sqlite_backend.has(e.id for e in entries) == set()
    assert sqlite_backend.tips(entries[0].id) == []
    assert await the_writer.put(records(entries), told) == [e.id for e in entries]
    assert sqlite_backend.tips(entries[0].id) == [entries[-1].id]
    sqlite_backend.close()


async def test_a_memory_backend_is_written_on_the_loop() -> None:
    backend = MemoryBackend()
    entries = build_entries(CHUNK + 1)
    told = Told()
    assert await Writer(backend).put(records(entries), told) == [e.id for e in entries]
    assert told.chunks == [(CHUNK + 1, [e.id for e in entries])]


async def test_checkpoints_run_off_the_loop_when_writes_make_them_due(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "CHECKPOINT_CHANGES", 100)
    ran: list[int] = []
    run = sqlite._Checkpoints._run

    def spied(self: sqlite._Checkpoints) -> None:
        ran.append(threading.get_ident())
        run(self)

    monkeypatch.setattr(sqlite._Checkpoints, "_run", spied)
    the_writer = Writer(sqlite_backend)
    entries = build_entries(40)
    for entry in entries[:10]:  # three rows each: one of entries, two of ordered
        await the_writer.put(records([entry]), Told())
    assert ran == []
    await the_writer.put(records(entries[10:]), Told())
    sqlite_backend.close()  # waits for the checkpoint's thread
    assert len(ran) == 1 and ran[0] != threading.get_ident()


def test_a_checkpoint_thread_that_cannot_start_fails_no_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A write whose checkpoint cannot start is committed all the same, so it must
    be settled: its caller is told of it, and the tips written at closing include it."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_CHANGES", 10)

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    backend = SqliteBackend(tmp_path / "c.db")
    entries = build_entries(12)
    for entry in entries:
        assert backend.put(records([entry])) == [entry.id]
    assert "checkpoint not started" in caplog.text
    backend.close()
    monkeypatch.undo()
    reopened = SqliteBackend(tmp_path / "c.db")
    assert reopened.tips(entries[0].id) == [entries[-1].id]
    reopened.close()


def test_a_second_backend_on_the_same_file_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = SqliteBackend(tmp_path / "w.db")
    with pytest.raises(StorageError, match="in use by another node"):
        SqliteBackend(tmp_path / "w.db")
    assert first.healthy()  # the refused open took nothing from the first
    first.put(records(build_entries(2)))
    first.close()
    second = SqliteBackend(tmp_path / "w.db")
    assert len(list(second.tree_ids(second.trees()[0]))) == 2
    second.close()


def test_writer_constants_keep_small_batches_on_the_loop() -> None:
    assert 1 < writer.THREAD_FROM <= writer.CHUNK


async def test_a_local_value_set_while_a_thread_writes_waits_for_it_not_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's lock is held for the thread's whole transaction; a local value set
    meanwhile is kept (and read back) until the write ends, then written."""
    backend = SqliteBackend(tmp_path / "w.db")
    entries = build_entries(THREAD_FROM)
    inside, go_on = threading.Event(), threading.Event()
    insert = SqliteBackend._insert

    def held_inside(self: SqliteBackend, batch: object, record: Record) -> None:
        if record.entry.id == entries[-1].id:
            inside.set()
            assert go_on.wait(10), "the loop was blocked by the writer's lock"
        insert(self, batch, record)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteBackend, "_insert", held_inside)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Writer(backend).put, records(entries), Told())
        await trio.to_thread.run_sync(inside.wait)
        backend.set_local("cursor", "during")  # would wait for the lock
        assert backend.get_local("cursor") == "during"
        go_on.set()
    backend.close()
    reopened = SqliteBackend(tmp_path / "w.db")
    assert reopened.get_local("cursor") == "during"
    reopened.close()


async def test_a_local_value_set_while_a_thread_writes_is_read_back_at_once(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``set_local`` is durable at once and this node alone writes it, so the loop
    reads back what it set even while the reader is pinned before a thread's write.
    A read-modify-write of one key (the peers an operator removed) would otherwise
    read the old value and lose the first of two changes made during a big write."""
    entries = build_entries(THREAD_FROM + 4)
    sqlite_backend.set_local("removed", "[]")
    started, go_on = threading.Event(), threading.Event()
    write = sqlite_backend.write

    def held(chunk: Sequence[Record]) -> Callable[[], list[str]]:
        started.set()
        go_on.wait()
        return write(chunk)

    monkeypatch.setattr(sqlite_backend, "write", held)
    the_writer = Writer(sqlite_backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_writer.put, records(entries), Told())
        try:
            assert await trio.to_thread.run_sync(started.wait, 10)
            assert the_writer.busy()
            sqlite_backend.set_local("removed", '["a"]')
            read_back = sqlite_backend.get_local("removed")
            unset = sqlite_backend.get_local("never set")
        finally:
            go_on.set()  # the thread must end, or the nursery waits for it
    assert read_back == '["a"]'
    assert unset is None
    assert sqlite_backend.get_local("removed") == '["a"]'
    sqlite_backend.close()
    reopened = SqliteBackend(sqlite_backend._path)
    assert reopened.get_local("removed") == '["a"]'
    reopened.close()


def test_a_checkpoint_that_cannot_start_fails_no_write(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is started after a write commits: if its thread cannot start (too
    many threads), the write stays stored and told, the caches say so, and a snapshot
    written then is one the backend knows of, to drop when it goes stale."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_CHANGES", 1)

    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    entries = build_entries(4)
    root = entries[0].id
    assert sqlite_backend.put(records(entries[:3])) == [e.id for e in entries[:3]]
    assert sqlite_backend.tips(root) == [entries[2].id]
    assert sqlite_backend.put_snapshot(root, STORE, Snapshot(entries[2].key, b"state")) is True
    assert sqlite_backend.get_snapshot(root, STORE) is not None
    sqlite_backend.set_local("key", "value")
    assert sqlite_backend.get_local("key") == "value"
    monkeypatch.undo()
    sqlite_backend.close()


@pytest.mark.parametrize("closed", ["before the thread writes", "after it commits"])
async def test_closing_the_backend_under_a_thread_write_ends_it_typed(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch, closed: str
) -> None:
    """A node may be closed while a big write is in a thread (a blocking caller's
    import, whose task outlives the instance's block). A write that had not begun
    fails with StorageError saying so, not sqlite3's ProgrammingError; one already
    committed is settled and told, though the reader it had pinned is closed."""
    root, *entries = build_entries(THREAD_FROM + 5)
    sqlite_backend.put(records([root]))  # settled: the tips written at closing hold it
    reached, go_on = threading.Event(), threading.Event()
    write = sqlite_backend.write

    def held(chunk: Sequence[Record]) -> Callable[[], list[str]]:
        if closed == "before the thread writes":
            reached.set()
            go_on.wait()
            return write(chunk)
        settle = write(chunk)
        reached.set()
        go_on.wait()
        return settle

    monkeypatch.setattr(sqlite_backend, "write", held)
    told = Told()
    outcome: list[object] = []

    async def put() -> None:
        try:
            outcome.append(await Writer(sqlite_backend).put(records(entries), told))
        except Exception as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        try:
            assert await trio.to_thread.run_sync(reached.wait, 10)
            sqlite_backend.close()
        finally:
            go_on.set()
    if closed == "before the thread writes":
        assert len(outcome) == 1 and isinstance(outcome[0], StorageError), outcome
        assert "closed" in str(outcome[0])
        assert told.chunks == []
    else:
        assert outcome == [[e.id for e in entries]]
        assert told.chunks == [(len(entries), [e.id for e in entries])]
    reopened = SqliteBackend(sqlite_backend._path)
    stored = reopened.has(e.id for e in entries)
    assert stored == (set() if closed == "before the thread writes" else {e.id for e in entries})
    # the tips written at closing left out a write not yet settled, for opening to replay
    tips = [root.id] if closed == "before the thread writes" else [entries[-1].id]
    assert reopened.tips(root.id) == tips
    reopened.close()


def test_no_checkpoint_starts_once_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that was under way when the backend closed may still count itself:
    it must not start a checkpoint on a connection nobody will close."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_CHANGES", 1)
    backend = SqliteBackend(tmp_path / "c.db")
    checkpoints = backend._checkpoints
    backend.close()
    other = sqlite3.connect(":memory:")  # the writer, still open in the race, is closed here
    checkpoints.wrote(other, 1 << 30)
    other.close()
    assert checkpoints._thread is None
