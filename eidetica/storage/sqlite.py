"""The SQLite backend: the embedded default, one WAL-mode file per node.

Entries are stored once as their canonical bytes, in a table whose integer keys grow
with every insert. The indexes beside it (per-DAG order, tips) are keyed by small
integers and heights, so inserting an entry appends to a few B-tree pages instead of
touching random ones: the cost of a commit is the pages it writes. Ids are stored as
their 32 raw bytes, whose order is the order of their hex form.

The tips of each DAG and the metadata of recently stored entries are also kept in
memory, so the reads every commit makes cost no query. No other process opens the
file while this one has it (an ``flock`` on a lock file beside it), so the caches
stay true. A write works out its changes to them beside them and they are applied
only once it is committed, so a rolled-back write leaves them as they were.

A "DAG" here is a tree (store ``""``) or one store in a tree; each gets a number in
``dags``. Tips are kept per DAG on every insert. An entry that names a parent not yet
stored leaves a row in ``dangling``, so the parent does not become a tip when it comes.

The ``tips`` table may lag the entries (see :class:`_LaggingTips`): it holds the tips
as of the entry numbered ``tips_through`` in ``meta``, and opening the file replays
the entries after it. So a local commit writes no row of ``tips``, and no page of it.

``snapshots`` holds at most one folded document state per DAG (see
:class:`~eidetica.storage.backend.Snapshot`); the insert that stores an entry sorting
at or before a snapshot's key deletes it in the same transaction, so a kill at any
point leaves no stale snapshot behind. The keys of the snapshots are kept in memory,
so inserts ask no query to check them.

The file holds every tree the node keeps, so it is owner-only (mode 0600), and so are
the ``-wal``, ``-shm``, ``-journal`` and ``-lock`` files beside it (see
:func:`_owner_only`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from eidetica.errors import MalformedEntry, StorageError
from eidetica.protocol.entry import Entry, load_entry
from eidetica.storage.backend import EntryMeta, OrderKey, Record, Snapshot

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
UPGRADES = {
    2: "a table of document snapshots (created by the schema script); a version 2 build"
    " would store entries without dropping the snapshots they make stale, so it must"
    " not open the file any more",
    3: "the tips table may lag the entries (meta 'tips_through', replayed on opening);"
    " a version 3 build would read stale tips, so it must not open the file any more",
}
"""What each older schema version lacks, by version. Upgrading runs the schema script
(every table is ``IF NOT EXISTS``) and then records the new version."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dags (
    number INTEGER PRIMARY KEY,
    tree BLOB NOT NULL,
    store TEXT NOT NULL,
    UNIQUE (tree, store)
);
CREATE TABLE IF NOT EXISTS entries (
    number INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    dag INTEGER NOT NULL,
    height INTEGER NOT NULL,
    parents BLOB NOT NULL,
    stores TEXT NOT NULL,
    settings_head BLOB NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ordered (
    dag INTEGER NOT NULL, height INTEGER NOT NULL, id BLOB NOT NULL, entry INTEGER NOT NULL,
    PRIMARY KEY (dag, height, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tips (
    dag INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY (dag, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dangling (
    dag INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY (dag, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    dag INTEGER PRIMARY KEY, height INTEGER NOT NULL, id BLOB NOT NULL, data BLOB NOT NULL
);
"""

_ID_BYTES = 32
_TREE = ""  # the store name that stands for the tree's own DAG
_RECENT_METAS = 4096
_BUSY_SECONDS = 0.5
_LOCAL = "local:"  # prefix of node-local keys in ``meta``, apart from the schema's own
_LOCK_FILE = "-lock"
_SIDE_FILES = ("-wal", "-shm", "-journal", _LOCK_FILE)
"""Suffixes of the files kept beside a database: SQLite's, which hold its pages too,
and the lock that says which process has it open."""
_TIPS_THROUGH = "tips_through"
"""The key in ``meta`` of the number of the last entry the ``tips`` table reflects."""
TIPS_LAG = 1024
"""Entries stored at most before the ``tips`` table is brought up to date, in the write
that passes it: what opening the file after a kill replays at most (decoding 1,000
entries takes about 18 ms here; a file closed cleanly replays none)."""
_ENTRY_PAGE = 256
_ID_PAGE = 4096
_ID_QUERY = 500
"""Ids asked about in one ``IN (...)`` query: under SQLite's 999-parameter floor."""
"""Rows an ordered read fetches per statement: entries, and bare ids."""
CHECKPOINT_CHANGES = 400
CHECKPOINT_BYTES = 1 << 20
"""Rows changed, or bytes written, between WAL checkpoints, each run in a thread of
its own. A commit changes three rows (an entry and its two rows of ``ordered``) and
writes about five pages, so this is about 700 pages of WAL: the checkpoint comes
before SQLite's own would."""
_BACKSTOP_PAGES = 2000
"""SQLite's own checkpoint, run inside the commit that fills the WAL this far (8 MiB
of 4 KiB pages): only if the checkpoint threads fall behind."""


def _pack(ids: Iterable[str]) -> bytes:
    return b"".join(bytes.fromhex(i) for i in ids)


def _unpack(blob: bytes) -> tuple[str, ...]:
    return tuple(blob[i : i + _ID_BYTES].hex() for i in range(0, len(blob), _ID_BYTES))


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(" ")) if text else ()


def _owner_only(path: Path) -> None:
    """Make the database at ``path`` and the files beside it readable by their owner only.

    SQLite's unix VFS creates a new database with mode 0644 less the umask, but gives
    its ``-wal``, ``-shm`` and ``-journal`` files the database file's own mode (it
    chmods them to it, whatever the umask). So the database is created here, empty and
    0600, before SQLite opens it, and its side files are born 0600 too. Files that an
    older version or a hand left wider are tightened, with one warning naming them:
    SQLite reopens an existing side file as it is.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    tightened = []
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(0o600)
            tightened.append(f"{file.name} (was {mode:o})")
    if tightened:
        log.warning(
            "others could read the database in %s: tightened %s to 600",
            path.parent,
            ", ".join(tightened),
        )


def _exclusive(lock_path: Path) -> int:
    """Take the lock that says this process has the database open; its descriptor.

    An ``flock`` on a file of its own beside the database (mode 0600), not on the
    database: closing any descriptor of the database file would drop SQLite's own
    POSIX locks on it, and a failed second open in this process would close one.
    The kernel drops the lock when the process ends, ``kill -9`` included.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if not isinstance(exc, BlockingIOError):
            raise  # no locks on this file system, say: the caller names the file
        database = lock_path.with_name(lock_path.name.removesuffix(_LOCK_FILE))
        raise StorageError(
            f"{database} is in use by another node: stop it, or give this one its own directory"
        ) from None
    return fd


class _Checkpoints:
    """WAL checkpoints, each in a thread of its own on a connection of its own, so
    neither the loop's reads nor the writes wait for one (a checkpoint inside a
    commit stalled the loop for 16 ms every 160 commits). Due after
    :data:`CHECKPOINT_CHANGES` rows changed or :data:`CHECKPOINT_BYTES` written; one at
    a time; a ``PASSIVE`` checkpoint copies what no reader still needs, never blocks,
    and lets the next write start the WAL over from its beginning."""

    def __init__(self, connect: Callable[..., sqlite3.Connection]) -> None:
        self._connect = connect
        self._db: sqlite3.Connection | None = None
        self._changes = 0
        self._bytes = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._guard = threading.Lock()
        """Held to start a checkpoint, and by :meth:`close`, so none starts after it."""

    def wrote(self, writer: sqlite3.Connection, size: int) -> None:
        """After a write committed on ``writer`` (under its lock, in any thread): count
        it, and start a checkpoint if one is due and none runs."""
        self._bytes += size
        if writer.total_changes - self._changes < CHECKPOINT_CHANGES and (
            self._bytes < CHECKPOINT_BYTES
        ):
            return
        with self._guard:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._changes, self._bytes = writer.total_changes, 0
            thread = threading.Thread(target=self._run, name="eidetica-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # the write it follows is committed: never fail it
                log.warning("WAL checkpoint not started (a later write tries again): %s", exc)
                return
            self._thread = thread

    def _run(self) -> None:
        try:
            if self._db is None:
                self._db = self._connect(cache_kib=2048)
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed (the next one tries again): %s", exc)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._db is not None:
            self._db.close()


class _LaggingTips:
    """What the ``tips`` table lags behind the tips in memory.

    Moving a DAG's tips at every commit cost a commit two statements and one page of
    its six. So the table is written only now and then: when :data:`TIPS_LAG` entries
    were stored since it was last, when a write stores an entry that a stored child
    already names (it deletes that row of ``dangling``), and on closing; each time the
    difference in every DAG it lags in, with ``tips_through`` in ``meta``, in the
    transaction of the write at hand. So an entry stored after ``tips_through`` was
    named by no stored entry: it became a tip and took its parents out of the tips
    (a parent not stored is no tip either way). Opening the file replays just that, in
    the order the entries were stored (:meth:`SqliteBackend._replay_tips`). Kept on
    the loop, like the other caches; a write reads it and its settling changes it.
    """

    __slots__ = ("behind", "written")

    def __init__(self) -> None:
        self.written: dict[int, set[str]] = {}
        """The tips the table holds, of each DAG whose tips in memory differ from them."""
        self.behind = 0
        """Entries stored since the table was last written."""


class _Batch:
    """One write's changes to the backend's caches, worked out in the writing thread
    over the caches as they are (which it only reads) and applied on the loop once the
    transaction is committed (:meth:`SqliteBackend._settle`).

    It also gathers the write's rows of ``ordered``, which :meth:`SqliteBackend._write`
    inserts with one statement for the whole write."""

    __slots__ = (
        "added",
        "dags",
        "dangling",
        "dropped",
        "metas",
        "ordered",
        "tips",
        "tips_before",
        "tips_written",
        "unsettled",
    )

    def __init__(self, dangling: int) -> None:
        self.added: list[str] = []
        self.dags: dict[tuple[str, str], int] = {}
        """DAG numbers made by this write."""
        self.tips: dict[int, set[str]] = {}
        """The tips of each DAG this write touched, as they are after it."""
        self.tips_before: dict[int, set[str]] = {}
        """The tips of each DAG this write touched, as they were before it."""
        self.ordered: list[tuple[int, int, bytes, int]] = []
        """Rows of ``ordered`` to insert: (dag, height, id, entry number)."""
        self.metas: dict[str, EntryMeta] = {}
        self.dropped: set[int] = set()
        """DAGs whose snapshot this write deleted."""
        self.dangling = dangling
        self.unsettled = False
        """Whether this write stored an entry that a stored child already named (it
        deleted a row of ``dangling``): replaying would make it a tip, so this write
        brings the tips table up to date."""
        self.tips_written = False
        """Whether this write brought the tips table up to date."""


class SqliteBackend:
    """Entries and their indexes in one SQLite file, readable by its owner only.

    Two connections: a writer, used by one thread at a time (a ``threading.Lock``),
    so a write may run in a worker thread (:class:`~eidetica.storage.backend.ThreadedWrites`),
    and a reader, used on the loop, which a worker's write never blocks (WAL). While a
    write runs in a thread the reader is *pinned*: it holds a read transaction begun
    before the write, so the loop's reads and the caches, which change only when the
    write is settled on the loop, agree. Ordered reads fetch a page of rows per query,
    so no statement is ever left open to pin the reader by accident.

    Checkpoints run in a thread of their own, on a third connection (SQLite's
    automatic checkpoint, which ran inside the commit that filled the WAL and stalled
    the loop, is only a backstop). No other process may open the file while this one
    has it: an ``flock`` on a lock file beside it says so.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        try:
            _owner_only(self._path)
            self._flock = _exclusive(self._path.with_name(self._path.name + _LOCK_FILE))
        except OSError as exc:
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        opened: list[sqlite3.Connection] = []
        try:
            self._writer = self._connect(cache_kib=16 * 1024)
            opened.append(self._writer)
            self._writer.execute("PRAGMA journal_mode = WAL")
            self._writer.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}")
            self._writer.executescript(_SCHEMA)
            self._check_version()
            self._reader = self._connect(cache_kib=64 * 1024)
            opened.append(self._reader)
            self._reader.execute("PRAGMA query_only = 1")
            dangling = self._writer.execute("SELECT count(*) FROM dangling").fetchone()
            self._dangling: int = dangling[0]
            self._snapshot_keys = self._load_snapshot_keys()
        except BaseException as exc:  # a refused open keeps neither the file nor its lock
            for db in opened:
                db.close()
            os.close(self._flock)
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
            raise
        self._lock = threading.Lock()
        """Held by whoever uses the writer connection: one thread at a time."""
        self._pinned = False
        self._closed = False
        """Set as :meth:`close` begins: a write not yet begun fails, typed."""
        self._local_pending: dict[str, str] = {}
        """Local values set while a thread writes: written when it ends, read back
        from here until then (the removed peers are read, changed and written back)."""
        self._checkpoints = _Checkpoints(self._connect)
        self._dags: dict[tuple[str, str], int] = {}
        self._tip_sets: dict[int, set[str]] = {}
        self._recent: OrderedDict[str, EntryMeta] = OrderedDict()
        self._lagging = _LaggingTips()
        try:
            self._replay_tips()
        except (sqlite3.DatabaseError, StorageError) as exc:
            self._lagging = _LaggingTips()  # half replayed: closing must not write it
            self.close()
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc

    def _connect(self, *, cache_kib: int) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_SECONDS
        )
        try:
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA cache_size = -{cache_kib}")
        except BaseException:  # a file that is no database fails here
            db.close()
            raise
        return db

    def _check_version(self) -> None:
        row = self._writer.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._writer.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            if not row[0].isdigit() or int(row[0]) not in UPGRADES:
                raise StorageError(
                    f"database schema {row[0]} is not {SCHEMA_VERSION}: open it with the"
                    " eidetica that wrote it (or a newer one), or give this node another directory"
                )
            log.info("upgrading database schema %s to %s", row[0], SCHEMA_VERSION)
            self._writer.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
            )

    def _dag(self, tree: str, store: str) -> int | None:
        """The number of a DAG, or None if nothing was stored in it (on the loop)."""
        number = self._dags.get((tree, store))
        if number is None:
            row = self._reader.execute(
                "SELECT number FROM dags WHERE tree = ? AND store = ?",
                (bytes.fromhex(tree), store),
            ).fetchone()
            if row is None:
                return None
            number = self._dags[tree, store] = row[0]
        return number

    # Writing: in any one thread at a time, under the lock. The caches are only read.

    def put(self, records: Sequence[Record]) -> list[str]:
        return self.write(records)()

    def pin(self) -> None:
        if self._closed:
            raise StorageError(f"{self._path} is closed: the node stopped")
        self._reader.execute("BEGIN")
        self._reader.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # the snapshot starts
        self._pinned = True

    def unpin(self) -> None:
        self._pinned = False
        if self._closed:  # closing ended the read, and writes what is pending
            return
        self._reader.execute("COMMIT")
        if self._local_pending:
            pending, self._local_pending = self._local_pending, {}
            try:
                self._write_local(pending)
            except StorageError as exc:  # kept, for the next unpin or close to write
                self._local_pending = {**pending, **self._local_pending}
                log.error("%s; trying again after the next write", exc)

    def write(self, records: Sequence[Record]) -> Callable[[], list[str]]:
        with self._lock:
            if self._closed:
                raise StorageError(
                    f"storing {len(records)} entries failed: {self._path} was closed"
                    " (the node stopped while they were under way)"
                )
            batch = _Batch(self._dangling)
            db = self._writer
            try:
                db.execute("BEGIN IMMEDIATE")
                for record in records:
                    self._insert(batch, record)
                self._write(batch)
                db.execute("COMMIT")
            except BaseException as exc:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.DatabaseError as rollback_error:
                    raise StorageError(f"rolling back failed: {rollback_error}") from exc
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StorageError(f"storing {len(records)} entries failed: {exc}") from exc
                raise
            self._checkpoints.wrote(db, sum(len(r.entry.raw) for r in records))
        return functools.partial(self._settle, batch)

    def _settle(self, batch: _Batch) -> list[str]:
        """Apply a committed write's changes to the caches (on the loop)."""
        self._dags.update(batch.dags)
        self._tip_sets.update(batch.tips)
        for entry_id, meta in batch.metas.items():
            if len(self._recent) >= _RECENT_METAS:
                self._recent.popitem(last=False)
            self._recent[entry_id] = meta
        for dag in batch.dropped:
            self._snapshot_keys.pop(dag, None)
        self._dangling = batch.dangling
        lagging = self._lagging
        if batch.tips_written:
            lagging.written.clear()
            lagging.behind = 0
        else:
            for dag, before in batch.tips_before.items():
                lagging.written.setdefault(dag, before)
            lagging.behind += len(batch.added)
        return batch.added

    def _load_snapshot_keys(self) -> dict[int, OrderKey]:
        rows = self._writer.execute("SELECT dag, height, id FROM snapshots").fetchall()
        return {dag: (height, raw_id.hex()) for dag, height, raw_id in rows}

    def _new_dag(self, batch: _Batch, tree: str, store: str) -> int:
        number = self._dags.get((tree, store)) or batch.dags.get((tree, store))
        if number is None:
            key = (bytes.fromhex(tree), store)
            row = self._writer.execute(
                "SELECT number FROM dags WHERE tree = ? AND store = ?", key
            ).fetchone()
            if row is None:
                row = self._writer.execute(
                    "INSERT INTO dags (tree, store) VALUES (?, ?) RETURNING number", key
                ).fetchone()
            number = batch.dags[tree, store] = row[0]
        return number

    def _insert(self, batch: _Batch, record: Record) -> None:
        entry = record.entry
        tree = entry.tree_id
        tree_dag = self._new_dag(batch, tree, _TREE)
        raw_id = bytes.fromhex(entry.id)
        inserted = self._writer.execute(
            "INSERT INTO entries (id, dag, height, parents, stores, settings_head, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                raw_id,
                tree_dag,
                entry.height,
                _pack(entry.parents),
                " ".join(write.name for write in entry.stores),
                _pack(record.settings_head),
                entry.raw,
            ),
        )
        if not inserted.rowcount:
            return  # stored already
        number = inserted.lastrowid  # not RETURNING, which costs a third of the insert
        assert number is not None
        self._link(batch, tree_dag, entry.key, entry.parents, row=(raw_id, number))
        for write in entry.stores:
            store_dag = self._new_dag(batch, tree, write.name)
            self._link(batch, store_dag, entry.key, write.parents, row=(raw_id, number))
        batch.metas[entry.id] = EntryMeta.of(record)
        batch.added.append(entry.id)

    def _link(
        self,
        batch: _Batch,
        dag: int,
        key: OrderKey,
        parents: tuple[str, ...],
        *,
        row: tuple[bytes, int],
    ) -> None:
        """Place one stored entry (``row``: its raw id and number in ``entries``) in one
        DAG: its row of ``ordered`` and the DAG's tips (gathered in ``batch``, written by
        :meth:`_write`), and ``dangling`` and the snapshot at once (rare: a parent not
        stored, a late arrival)."""
        db = self._writer
        height, entry_id = key
        raw_id, number = row
        tips = self._batch_tips(batch, dag)
        batch.ordered.append((dag, height, raw_id, number))
        snapshot_key = self._snapshot_keys.get(dag)
        if snapshot_key is not None and key <= snapshot_key and dag not in batch.dropped:
            db.execute("DELETE FROM snapshots WHERE dag = ?", (dag,))
            batch.dropped.add(dag)
        for parent in parents:
            if parent in tips:
                tips.discard(parent)
            elif not self._written(batch, parent):
                batch.dangling += db.execute(
                    "INSERT OR IGNORE INTO dangling VALUES (?, ?)", (dag, bytes.fromhex(parent))
                ).rowcount
        if (
            batch.dangling
            and db.execute("DELETE FROM dangling WHERE dag = ? AND id = ?", (dag, raw_id)).rowcount
        ):
            batch.dangling -= 1
            batch.unsettled = True
            return  # a stored child already names this entry
        tips.add(entry_id)

    def _write(self, batch: _Batch) -> None:
        """Write what ``batch`` gathered: its rows of ``ordered`` in one statement, and
        the tips table, if it is due (:class:`_LaggingTips`)."""
        db = self._writer
        if batch.ordered:
            db.executemany("INSERT INTO ordered VALUES (?, ?, ?, ?)", batch.ordered)
        if batch.unsettled or self._lagging.behind + len(batch.added) >= TIPS_LAG:
            self._write_tips(batch)

    def _write_tips(self, batch: _Batch) -> None:
        """Bring the tips table up to date with the tips as they are after ``batch``:
        the difference in each DAG where they differ from what it holds."""
        db = self._writer
        written = {**batch.tips_before, **self._lagging.written}
        gone: list[tuple[int, bytes]] = []
        new: list[tuple[int, bytes]] = []
        for dag, held in written.items():
            tips = batch.tips.get(dag)
            if tips is None:
                tips = self._tip_sets[dag]
            gone.extend((dag, bytes.fromhex(tip)) for tip in held - tips)
            new.extend((dag, bytes.fromhex(tip)) for tip in tips - held)
        if gone:
            db.executemany("DELETE FROM tips WHERE dag = ? AND id = ?", gone)
        if new:
            db.executemany("INSERT INTO tips VALUES (?, ?)", new)
        self._set_tips_through()
        batch.tips_written = True

    def _set_tips_through(self) -> None:
        """Record that the tips table reflects every entry stored (in the transaction
        under way on the writer)."""
        self._writer.execute(
            "INSERT INTO meta (key, value) SELECT ?, coalesce(max(number), 0) FROM entries"
            " WHERE true ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_TIPS_THROUGH,),
        )

    def _replay_tips(self) -> None:
        """On opening: bring the tips in memory up to the entries stored after the
        tips table was last written, the way they were when each was stored."""
        row = self._writer.execute(
            "SELECT value FROM meta WHERE key = ?", (_TIPS_THROUGH,)
        ).fetchone()
        if row is None:  # written by schema 3 or before, whose tips table is whole
            with self._lock:
                self._set_tips_through()
            return
        if not str(row[0]).isdigit():
            raise StorageError(f"tips_through is {row[0]!r}, not an entry number")
        rows = self._reader.execute(
            "SELECT raw FROM entries WHERE number > ? ORDER BY number", (int(row[0]),)
        ).fetchall()
        lagging = self._lagging
        for (raw,) in rows:
            entry = self._decode(raw)
            dags = [(_TREE, entry.parents)]
            dags.extend((write.name, write.parents) for write in entry.stores)
            for store, parents in dags:
                dag = self._dag(entry.tree_id, store)
                if dag is None:
                    raise StorageError(f"entry {entry.id} is stored in no DAG of {store!r}")
                tips = self._dag_tips(dag)
                if dag not in lagging.written:
                    lagging.written[dag] = set(tips)
                tips.difference_update(parents)
                tips.add(entry.id)
        lagging.behind = len(rows)
        if rows:
            log.info("replayed %d entries stored after the tips were last written", len(rows))

    def _written(self, batch: _Batch, entry_id: str) -> bool:
        """Whether the entry is stored, as the writer sees it."""
        if entry_id in self._recent or entry_id in batch.metas:
            return True
        found = self._writer.execute(
            "SELECT 1 FROM entries WHERE id = ?", (bytes.fromhex(entry_id),)
        ).fetchone()
        return found is not None

    def _batch_tips(self, batch: _Batch, dag: int) -> set[str]:
        tips = batch.tips.get(dag)
        if tips is None:
            known = self._tip_sets.get(dag)
            if known is None:
                rows = self._writer.execute("SELECT id FROM tips WHERE dag = ?", (dag,))
                known = {row[0].hex() for row in rows.fetchall()}
            batch.tips_before[dag] = known
            tips = batch.tips[dag] = set(known)
        return tips

    # Reading: on the loop, through the reader.

    def _dag_tips(self, dag: int) -> set[str]:
        tips = self._tip_sets.get(dag)
        if tips is None:
            rows = self._reader.execute("SELECT id FROM tips WHERE dag = ?", (dag,)).fetchall()
            tips = self._tip_sets[dag] = {row[0].hex() for row in rows}
        return tips

    def get(self, entry_id: str) -> Entry | None:
        row = self._reader.execute(
            "SELECT raw FROM entries WHERE id = ?", (bytes.fromhex(entry_id),)
        ).fetchone()
        return None if row is None else self._decode(row[0])

    def meta(self, entry_ids: Iterable[str]) -> dict[str, EntryMeta]:
        found: dict[str, EntryMeta] = {}
        query = (
            "SELECT d.tree, e.height, e.parents, e.stores, e.settings_head"
            " FROM entries e JOIN dags d ON d.number = e.dag WHERE e.id = ?"
        )
        for entry_id in entry_ids:
            recent = self._recent.get(entry_id)
            if recent is not None:
                found[entry_id] = recent
                continue
            row = self._reader.execute(query, (bytes.fromhex(entry_id),)).fetchone()
            if row is not None:
                found[entry_id] = EntryMeta(
                    id=entry_id,
                    tree=row[0].hex(),
                    height=row[1],
                    parents=_unpack(row[2]),
                    stores=_split(row[3]),
                    settings_head=_unpack(row[4]),
                )
        return found

    def has(self, entry_ids: Iterable[str]) -> set[str]:
        """Asks the reader once per :data:`_ID_QUERY` ids the recent cache does not
        know: a page's presence check asked 1,024 queries in one step of the loop."""
        found: set[str] = set()
        unknown: list[bytes] = []
        for entry_id in entry_ids:
            if entry_id in self._recent:
                found.add(entry_id)
            else:
                unknown.append(bytes.fromhex(entry_id))
        for start in range(0, len(unknown), _ID_QUERY):
            chunk = unknown[start : start + _ID_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = self._reader.execute(f"SELECT id FROM entries WHERE id IN ({marks})", chunk)
            found.update(row[0].hex() for row in rows.fetchall())
        return found

    def trees(self) -> list[str]:
        rows = self._reader.execute(
            "SELECT d.tree FROM dags d JOIN entries e ON e.id = d.tree"
            " WHERE d.store = '' ORDER BY d.tree"
        ).fetchall()
        return [row[0].hex() for row in rows]

    def tips(self, tree: str) -> list[str]:
        return self._tips(tree, _TREE)

    def store_tips(self, tree: str, store: str) -> list[str]:
        return self._tips(tree, store)

    def _tips(self, tree: str, store: str) -> list[str]:
        dag = self._dag(tree, store)
        return [] if dag is None else sorted(self._dag_tips(dag))

    def tree_entries(self, tree: str, after: OrderKey | None = None) -> Iterator[Entry]:
        return self._ordered(tree, _TREE, after)

    def tree_ids(self, tree: str, min_height: int = 0) -> Iterator[str]:
        dag = self._dag(tree, _TREE)
        if dag is None:
            return iter(())
        query = "SELECT o.height, o.id FROM ordered o WHERE o.dag = ? AND (o.height, o.id) > (?, ?)"
        rows = self._pages(query, dag, (min_height, b""), _ID_PAGE)  # every id > b""
        return (raw_id.hex() for _, raw_id in rows)

    def store_entries(
        self, tree: str, store: str, after: OrderKey | None = None
    ) -> Iterator[Entry]:
        return self._ordered(tree, store, after)

    def _ordered(self, tree: str, store: str, after: OrderKey | None) -> Iterator[Entry]:
        dag = self._dag(tree, store)
        if dag is None:
            return iter(())
        height, entry_id = after if after is not None else (-1, "")
        query = (
            "SELECT o.height, o.id, e.raw FROM ordered o JOIN entries e ON e.number = o.entry"
            " WHERE o.dag = ? AND (o.height, o.id) > (?, ?)"
        )
        rows = self._pages(query, dag, (height, bytes.fromhex(entry_id)), _ENTRY_PAGE)
        return (self._decode(raw) for _, _, raw in rows)

    def _pages(
        self, query: str, dag: int, after: tuple[int, bytes], size: int
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query`` (whose first two columns are the height and id) in
        (height, id) order, a page of ``size`` rows per statement, each run to its
        end: an iteration left unfinished holds no statement open on the reader."""
        paged = f"{query} ORDER BY o.height, o.id LIMIT ?"
        while True:
            rows = self._reader.execute(paged, (dag, *after, size)).fetchall()
            yield from rows
            if len(rows) < size:
                return
            after = (rows[-1][0], rows[-1][1])

    @staticmethod
    def _decode(raw: bytes) -> Entry:
        try:
            return load_entry(bytes(raw))
        except MalformedEntry as exc:
            raise StorageError(f"database holds an unreadable entry: {exc}") from exc

    def get_local(self, key: str) -> str | None:
        pending = self._local_pending.get(key)
        if pending is not None:
            return pending
        row = self._reader.execute(
            "SELECT value FROM meta WHERE key = ?", (_LOCAL + key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_local(self, key: str, value: str) -> None:
        """Durable at once; or, while a write runs in a worker thread, kept in memory
        (and read back) until it ends, then written: waiting for the writer's lock
        held the loop for as long as the thread's transaction (50-100 ms)."""
        if self._pinned:
            self._local_pending[key] = value
            return
        self._write_local({key: value})

    def _write_local(self, values: dict[str, str]) -> None:
        db = self._writer
        try:
            with self._lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [(_LOCAL + key, value) for key, value in values.items()],
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self._checkpoints.wrote(db, sum(len(value) for value in values.values()))
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"storing local values {sorted(values)} failed: {exc}") from exc

    def put_snapshot(self, tree: str, store: str, snapshot: Snapshot) -> bool:
        if self._pinned:
            return False
        height, entry_id = snapshot.last
        try:
            with self._lock:
                batch = _Batch(self._dangling)
                dag = self._new_dag(batch, tree, store)
                self._writer.execute(
                    "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT (dag) DO UPDATE"
                    " SET height = excluded.height, id = excluded.id, data = excluded.data",
                    (dag, height, bytes.fromhex(entry_id), snapshot.data),
                )
                self._checkpoints.wrote(self._writer, len(snapshot.data))
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"storing a snapshot of {store!r} failed: {exc}") from exc
        self._settle(batch)
        self._snapshot_keys[dag] = snapshot.last
        return True

    def get_snapshot(self, tree: str, store: str) -> Snapshot | None:
        dag = self._dag(tree, store)
        if dag is None or dag not in self._snapshot_keys:
            return None
        row = self._reader.execute("SELECT data FROM snapshots WHERE dag = ?", (dag,)).fetchone()
        return None if row is None else Snapshot(self._snapshot_keys[dag], bytes(row[0]))

    def backup(self, path: Path) -> None:
        """Copy the database as it is now to a new file at ``path`` (mode 0600), with
        SQLite's online backup API through the writer connection, under its lock: the
        copy holds what is committed, the WAL's pages included, consistent as of one
        moment. It runs to its end in one call, so a node's other work waits for it."""
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            target = sqlite3.connect(path)
            try:
                with self._lock:
                    self._writer.backup(target)
            finally:
                target.close()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"backing up to {path} failed: {exc}") from exc

    def healthy(self) -> bool:
        try:
            self._reader.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        """Close the connections, then let go of the file; closing again does nothing."""
        if self._flock < 0:
            return
        self._closed = True
        if self._local_pending:
            pending, self._local_pending = self._local_pending, {}
            self._write_local(pending)
        self._checkpoints.close()
        if self._lagging.written and not self._pinned:  # pinned: a write is unsettled,
            try:  # so the caches miss it: the tips stay as they were, and opening replays
                with self._lock:
                    self._writer.execute("BEGIN IMMEDIATE")
                    try:
                        self._write_tips(_Batch(self._dangling))
                        self._writer.execute("COMMIT")
                    except BaseException:
                        self._writer.execute("ROLLBACK")
                        raise
            except sqlite3.DatabaseError as exc:
                log.warning("the tips were not written at closing (opening replays): %s", exc)
        try:
            self._reader.close()
            with self._lock:
                self._writer.close()
        finally:
            os.close(self._flock)
            self._flock = -1
