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

SCHEMA_VERSION = 3
UPGRADES = {
    2: "a table of document snapshots (created by the schema script); a version 2 build"
    " would store entries without dropping the snapshots they make stale, so it must"
    " not open the file any more",
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
_ENTRY_PAGE = 256
_ID_PAGE = 4096
"""Rows an ordered read fetches per statement: entries, and bare ids."""
CHECKPOINT_CHANGES = 700
CHECKPOINT_BYTES = 1 << 20
"""Rows changed, or bytes written, between WAL checkpoints, each run in a thread of
its own. A commit changes about seven rows and writes about six pages, so this is
about 600 pages of WAL: the checkpoint comes before SQLite's own would."""
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


class _Batch:
    """One write's changes to the backend's caches, worked out in the writing thread
    over the caches as they are (which it only reads) and applied on the loop once the
    transaction is committed (:meth:`SqliteBackend._settle`)."""

    __slots__ = ("added", "dags", "dangling", "dropped", "metas", "tips")

    def __init__(self, dangling: int) -> None:
        self.added: list[str] = []
        self.dags: dict[tuple[str, str], int] = {}
        """DAG numbers made by this write."""
        self.tips: dict[int, set[str]] = {}
        """The tips of each DAG this write touched, as they are after it."""
        self.metas: dict[str, EntryMeta] = {}
        self.dropped: set[int] = set()
        """DAGs whose snapshot this write deleted."""
        self.dangling = dangling


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
        self._unseen_locals: dict[str, str] = {}
        """Local values set while the reader is pinned, which it cannot see yet: a
        read-modify-write of one (the removed peers) must read back its own write."""
        self._checkpoints = _Checkpoints(self._connect)
        self._dags: dict[tuple[str, str], int] = {}
        self._tip_sets: dict[int, set[str]] = {}
        self._recent: OrderedDict[str, EntryMeta] = OrderedDict()

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
                raise StorageError(f"database schema {row[0]} is not {SCHEMA_VERSION}")
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
        if not self._closed:  # closing ended the read transaction with the reader
            self._reader.execute("COMMIT")
        self._unseen_locals.clear()

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
        row = self._writer.execute(
            "INSERT INTO entries (id, dag, height, parents, stores, settings_head, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING number",
            (
                bytes.fromhex(entry.id),
                tree_dag,
                entry.height,
                _pack(entry.parents),
                " ".join(write.name for write in entry.stores),
                _pack(record.settings_head),
                entry.raw,
            ),
        ).fetchone()
        if row is None:
            return
        self._link(batch, tree_dag, row[0], entry.key, entry.parents)
        for write in entry.stores:
            store_dag = self._new_dag(batch, tree, write.name)
            self._link(batch, store_dag, row[0], entry.key, write.parents)
        batch.metas[entry.id] = EntryMeta.of(record)
        batch.added.append(entry.id)

    def _link(
        self, batch: _Batch, dag: int, number: int, key: OrderKey, parents: tuple[str, ...]
    ) -> None:
        db = self._writer
        height, entry_id = key
        raw_id = bytes.fromhex(entry_id)
        tips = self._batch_tips(batch, dag)
        db.execute("INSERT INTO ordered VALUES (?, ?, ?, ?)", (dag, height, raw_id, number))
        snapshot_key = self._snapshot_keys.get(dag)
        if snapshot_key is not None and key <= snapshot_key and dag not in batch.dropped:
            db.execute("DELETE FROM snapshots WHERE dag = ?", (dag,))
            batch.dropped.add(dag)
        for parent in parents:
            raw_parent = bytes.fromhex(parent)
            if parent in tips:
                tips.discard(parent)
                db.execute("DELETE FROM tips WHERE dag = ? AND id = ?", (dag, raw_parent))
            elif not self._written(batch, parent, raw_parent):
                batch.dangling += db.execute(
                    "INSERT OR IGNORE INTO dangling VALUES (?, ?)", (dag, raw_parent)
                ).rowcount
        if (
            batch.dangling
            and db.execute("DELETE FROM dangling WHERE dag = ? AND id = ?", (dag, raw_id)).rowcount
        ):
            batch.dangling -= 1
            return  # a stored child already names this entry
        db.execute("INSERT INTO tips VALUES (?, ?)", (dag, raw_id))
        tips.add(entry_id)

    def _written(self, batch: _Batch, entry_id: str, raw_id: bytes) -> bool:
        """Whether the entry is stored, as the writer sees it."""
        if entry_id in self._recent or entry_id in batch.metas:
            return True
        return bool(
            self._writer.execute("SELECT 1 FROM entries WHERE id = ?", (raw_id,)).fetchone()
        )

    def _batch_tips(self, batch: _Batch, dag: int) -> set[str]:
        tips = batch.tips.get(dag)
        if tips is None:
            known = self._tip_sets.get(dag)
            if known is None:
                rows = self._writer.execute("SELECT id FROM tips WHERE dag = ?", (dag,))
                tips = {row[0].hex() for row in rows.fetchall()}
            else:
                tips = set(known)
            batch.tips[dag] = tips
        return tips

    # Reading: on the loop, through the reader.

    def _dag_tips(self, dag: int) -> set[str]:
        tips = self._tip_sets.get(dag)
        if tips is None:
            rows = self._reader.execute("SELECT id FROM tips WHERE dag = ?", (dag,)).fetchall()
            tips = self._tip_sets[dag] = {row[0].hex() for row in rows}
        return tips

    def _stored(self, raw_id: bytes) -> bool:
        found = self._reader.execute("SELECT 1 FROM entries WHERE id = ?", (raw_id,)).fetchone()
        return found is not None

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
        return {i for i in entry_ids if i in self._recent or self._stored(bytes.fromhex(i))}

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
        unseen = self._unseen_locals.get(key)
        if unseen is not None:
            return unseen
        row = self._reader.execute(
            "SELECT value FROM meta WHERE key = ?", (_LOCAL + key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_local(self, key: str, value: str) -> None:
        try:
            with self._lock:
                self._writer.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_LOCAL + key, value),
                )
                self._checkpoints.wrote(self._writer, len(value))
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"storing local value {key!r} failed: {exc}") from exc
        if self._pinned:
            self._unseen_locals[key] = value

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
        self._checkpoints.close()
        try:
            self._reader.close()
            with self._lock:
                self._writer.close()
        finally:
            os.close(self._flock)
            self._flock = -1
