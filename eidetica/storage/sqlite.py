"""The SQLite backend: the embedded default, one WAL-mode file per node.

Entries are stored once as their canonical bytes, in a table whose integer keys grow
with every insert. The indexes beside it (per-DAG order, tips) are keyed by small
integers and heights, so inserting an entry appends to a few B-tree pages instead of
touching random ones: the cost of a commit is the pages it writes. Ids are stored as
their 32 raw bytes, whose order is the order of their hex form.

The tips of each DAG and the metadata of recently stored entries are also kept in
memory, so the reads every commit makes cost no query. The file is opened in
exclusive locking mode, so no other process reads or writes it while it is open and
the caches stay true; a rolled-back batch drops them.

A "DAG" here is a tree (store ``""``) or one store in a tree; each gets a number in
``dags``. Tips are kept per DAG on every insert. An entry that names a parent not yet
stored leaves a row in ``dangling``, so the parent does not become a tip when it comes.

``snapshots`` holds at most one folded document state per DAG (see
:class:`~eidetica.storage.backend.Snapshot`); the insert that stores an entry sorting
at or before a snapshot's key deletes it in the same transaction, so a kill at any
point leaves no stale snapshot behind. The keys of the snapshots are kept in memory,
so inserts ask no query to check them.

The file holds every tree the node keeps, so it is owner-only (mode 0600), and so are
the ``-wal``, ``-shm`` and ``-journal`` files beside it (see :func:`_owner_only`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

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
_SIDE_FILES = ("-wal", "-shm", "-journal")
"""Suffixes of the files SQLite keeps beside a database, which hold its pages too."""


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


class SqliteBackend:
    """Entries and their indexes in one SQLite file, readable by its owner only."""

    def __init__(self, path: str | Path) -> None:
        try:
            _owner_only(Path(path))
        except OSError as exc:
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_SECONDS
            )
            # One process owns a node's file while it is open: the in-memory caches
            # rely on it, and SQLite skips its per-transaction shared-memory locking.
            self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA cache_size = -65536")  # 64 MiB
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StorageError(f"{path} is in use by another process") from exc
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        self._dags: dict[tuple[str, str], int] = {}
        self._tip_sets: dict[int, set[str]] = {}
        self._recent: OrderedDict[str, EntryMeta] = OrderedDict()
        self._dangling = self._db.execute("SELECT count(*) FROM dangling").fetchone()[0]
        self._snapshot_keys = self._load_snapshot_keys()

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            if not row[0].isdigit() or int(row[0]) not in UPGRADES:
                raise StorageError(f"database schema {row[0]} is not {SCHEMA_VERSION}")
            log.info("upgrading database schema %s to %s", row[0], SCHEMA_VERSION)
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
            )

    def _dag(self, tree: str, store: str, *, create: bool = False) -> int | None:
        """The number of a DAG; made on first use when ``create``."""
        number = self._dags.get((tree, store))
        if number is None:
            key = (bytes.fromhex(tree), store)
            row = self._db.execute(
                "SELECT number FROM dags WHERE tree = ? AND store = ?", key
            ).fetchone()
            if row is None:
                if not create:
                    return None
                row = self._db.execute(
                    "INSERT INTO dags (tree, store) VALUES (?, ?) RETURNING number", key
                ).fetchone()
            number = self._dags[tree, store] = row[0]
        return number

    def put(self, records: Sequence[Record]) -> list[str]:
        added: list[str] = []
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for record in records:
                if self._insert(record):
                    added.append(record.entry.id)
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
                self._forget()
            except sqlite3.DatabaseError as rollback_error:
                raise StorageError(f"rolling back failed: {rollback_error}") from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"storing {len(records)} entries failed: {exc}") from exc
            raise
        return added

    def _forget(self) -> None:
        """Drop every cache: after a rollback they may hold what was never stored."""
        self._dags.clear()
        self._tip_sets.clear()
        self._recent.clear()
        self._dangling = self._db.execute("SELECT count(*) FROM dangling").fetchone()[0]
        self._snapshot_keys = self._load_snapshot_keys()

    def _load_snapshot_keys(self) -> dict[int, OrderKey]:
        rows = self._db.execute("SELECT dag, height, id FROM snapshots")
        return {dag: (height, raw_id.hex()) for dag, height, raw_id in rows}

    def _remember(self, meta: EntryMeta) -> None:
        if len(self._recent) >= _RECENT_METAS:
            self._recent.popitem(last=False)
        self._recent[meta.id] = meta

    def _insert(self, record: Record) -> bool:
        entry = record.entry
        tree = entry.tree_id
        raw_id = bytes.fromhex(entry.id)
        tree_dag = self._dag(tree, _TREE, create=True)
        row = self._db.execute(
            "INSERT INTO entries (id, dag, height, parents, stores, settings_head, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING number",
            (
                raw_id,
                tree_dag,
                entry.height,
                _pack(entry.parents),
                " ".join(write.name for write in entry.stores),
                _pack(record.settings_head),
                entry.raw,
            ),
        ).fetchone()
        if row is None:
            return False
        self._link(tree_dag, row[0], entry.id, entry.height, entry.parents)  # type: ignore[arg-type]
        for write in entry.stores:
            store_dag = self._dag(tree, write.name, create=True)
            self._link(store_dag, row[0], entry.id, entry.height, write.parents)  # type: ignore[arg-type]
        self._remember(EntryMeta.of(record))
        return True

    def _link(
        self, dag: int, number: int, entry_id: str, height: int, parents: tuple[str, ...]
    ) -> None:
        db = self._db
        raw_id = bytes.fromhex(entry_id)
        tips = self._dag_tips(dag)
        db.execute("INSERT INTO ordered VALUES (?, ?, ?, ?)", (dag, height, raw_id, number))
        snapshot_key = self._snapshot_keys.get(dag)
        if snapshot_key is not None and (height, entry_id) <= snapshot_key:
            db.execute("DELETE FROM snapshots WHERE dag = ?", (dag,))
            del self._snapshot_keys[dag]
        for parent in parents:
            raw_parent = bytes.fromhex(parent)
            if parent in tips:
                tips.discard(parent)
                db.execute("DELETE FROM tips WHERE dag = ? AND id = ?", (dag, raw_parent))
            elif parent not in self._recent and not self._stored(raw_parent):
                self._dangling += db.execute(
                    "INSERT OR IGNORE INTO dangling VALUES (?, ?)", (dag, raw_parent)
                ).rowcount
        if (
            self._dangling
            and db.execute("DELETE FROM dangling WHERE dag = ? AND id = ?", (dag, raw_id)).rowcount
        ):
            self._dangling -= 1
            return  # a stored child already names this entry
        db.execute("INSERT INTO tips VALUES (?, ?)", (dag, raw_id))
        tips.add(entry_id)

    def _stored(self, raw_id: bytes) -> bool:
        return bool(self._db.execute("SELECT 1 FROM entries WHERE id = ?", (raw_id,)).fetchone())

    def _dag_tips(self, dag: int) -> set[str]:
        tips = self._tip_sets.get(dag)
        if tips is None:
            rows = self._db.execute("SELECT id FROM tips WHERE dag = ?", (dag,))
            tips = self._tip_sets[dag] = {row[0].hex() for row in rows}
        return tips

    def get(self, entry_id: str) -> Entry | None:
        row = self._db.execute(
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
            row = self._db.execute(query, (bytes.fromhex(entry_id),)).fetchone()
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
        rows = self._db.execute(
            "SELECT d.tree FROM dags d JOIN entries e ON e.id = d.tree"
            " WHERE d.store = '' ORDER BY d.tree"
        )
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
        rows = self._db.execute(
            "SELECT id FROM ordered WHERE dag = ? AND height >= ? ORDER BY height, id",
            (dag, min_height),
        )
        return (row[0].hex() for row in rows)

    def store_entries(
        self, tree: str, store: str, after: OrderKey | None = None
    ) -> Iterator[Entry]:
        return self._ordered(tree, store, after)

    def _ordered(self, tree: str, store: str, after: OrderKey | None) -> Iterator[Entry]:
        dag = self._dag(tree, store)
        if dag is None:
            return iter(())
        height, entry_id = after if after is not None else (-1, "")
        rows = self._db.execute(
            "SELECT e.raw FROM ordered o JOIN entries e ON e.number = o.entry"
            " WHERE o.dag = ? AND (o.height, o.id) > (?, ?) ORDER BY o.height, o.id",
            (dag, height, bytes.fromhex(entry_id)),
        )
        return (self._decode(row[0]) for row in rows)

    @staticmethod
    def _decode(raw: bytes) -> Entry:
        try:
            return load_entry(bytes(raw))
        except MalformedEntry as exc:
            raise StorageError(f"database holds an unreadable entry: {exc}") from exc

    def get_local(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_LOCAL + key,)).fetchone()
        return None if row is None else str(row[0])

    def set_local(self, key: str, value: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_LOCAL + key, value),
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"storing local value {key!r} failed: {exc}") from exc

    def put_snapshot(self, tree: str, store: str, snapshot: Snapshot) -> None:
        height, entry_id = snapshot.last
        try:
            dag = self._dag(tree, store, create=True)
            self._db.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT (dag) DO UPDATE"
                " SET height = excluded.height, id = excluded.id, data = excluded.data",
                (dag, height, bytes.fromhex(entry_id), snapshot.data),
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"storing a snapshot of {store!r} failed: {exc}") from exc
        assert dag is not None, "made on first use"
        self._snapshot_keys[dag] = snapshot.last

    def get_snapshot(self, tree: str, store: str) -> Snapshot | None:
        dag = self._dag(tree, store)
        if dag is None or dag not in self._snapshot_keys:
            return None
        row = self._db.execute("SELECT data FROM snapshots WHERE dag = ?", (dag,)).fetchone()
        return None if row is None else Snapshot(self._snapshot_keys[dag], bytes(row[0]))

    def backup(self, path: Path) -> None:
        """Copy the database as it is now to a new file at ``path`` (mode 0600), with
        SQLite's online backup API through this connection: the file is opened in
        exclusive mode, so no other connection could read it, and the copy holds what
        is committed, the WAL's pages included, consistent as of one moment. It runs
        to its end in one call, so a node's other work waits for it."""
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            target = sqlite3.connect(path)
            try:
                self._db.backup(target)
            finally:
                target.close()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"backing up to {path} failed: {exc}") from exc

    def healthy(self) -> bool:
        try:
            self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        self._db.close()
