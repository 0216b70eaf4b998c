"""The in-memory backend: for tests and ephemeral nodes."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

from eidetica.protocol.entry import Entry
from eidetica.storage.backend import EntryMeta, OrderKey, Record, Snapshot


class _OrderedIds:
    """Ids kept sorted by (height, id), so folds can resume after a key."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: list[OrderKey] = []

    def add(self, key: OrderKey) -> None:
        keys = self.keys
        if not keys or keys[-1] < key:
            keys.append(key)  # in order, as a pull's pages and commits come: no shift
        else:
            bisect.insort(keys, key)

    def from_height(self, height: int) -> Iterator[str]:
        start = bisect.bisect_left(self.keys, (height, ""))
        return (self.keys[i][1] for i in range(start, len(self.keys)))

    def after(self, key: OrderKey | None) -> list[str]:
        start = 0 if key is None else bisect.bisect_right(self.keys, key)
        return [entry_id for _, entry_id in self.keys[start:]]


class _Dag:
    """Tips of one DAG (a tree, or one store in it), maintained per insert."""

    __slots__ = ("ordered", "referenced", "tips")

    def __init__(self) -> None:
        self.tips: set[str] = set()
        self.referenced: set[str] = set()
        self.ordered = _OrderedIds()

    def add(self, entry_id: str, key: OrderKey, parents: Iterable[str]) -> None:
        for parent in parents:
            self.referenced.add(parent)
            self.tips.discard(parent)
        if entry_id not in self.referenced:
            self.tips.add(entry_id)
        self.ordered.add(key)


class MemoryBackend:
    """Everything in dicts; tips are updated per insert in O(parents)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._meta: dict[str, EntryMeta] = {}
        self._trees: dict[str, _Dag] = defaultdict(_Dag)
        self._stores: dict[tuple[str, str], _Dag] = defaultdict(_Dag)
        self._roots: set[str] = set()
        self._local: dict[str, str] = {}
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._closed = False

    def put(self, records: Sequence[Record]) -> list[str]:
        added: list[str] = []
        for record in records:
            entry = record.entry
            if entry.id in self._entries:
                continue
            self._entries[entry.id] = entry
            self._meta[entry.id] = EntryMeta.of(record)
            self._trees[entry.tree_id].add(entry.id, entry.key, entry.parents)
            for write in entry.stores:
                self._stores[entry.tree_id, write.name].add(entry.id, entry.key, write.parents)
                snapshot = self._snapshots.get((entry.tree_id, write.name))
                if snapshot is not None and entry.key <= snapshot.last:
                    del self._snapshots[entry.tree_id, write.name]
            if entry.is_root:
                self._roots.add(entry.id)
            added.append(entry.id)
        return added

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def meta(self, entry_ids: Iterable[str]) -> dict[str, EntryMeta]:
        return {i: self._meta[i] for i in entry_ids if i in self._meta}

    def has(self, entry_ids: Iterable[str]) -> set[str]:
        return {i for i in entry_ids if i in self._entries}

    def trees(self) -> list[str]:
        return sorted(self._roots)

    def tips(self, tree: str) -> list[str]:
        dag = self._trees.get(tree)
        return sorted(dag.tips) if dag else []

    def store_tips(self, tree: str, store: str) -> list[str]:
        dag = self._stores.get((tree, store))
        return sorted(dag.tips) if dag else []

    def tree_entries(self, tree: str, after: OrderKey | None = None) -> Iterator[Entry]:
        dag = self._trees.get(tree)
        return iter([self._entries[i] for i in dag.ordered.after(after)] if dag else [])

    def tree_ids(self, tree: str, min_height: int = 0) -> Iterator[str]:
        dag = self._trees.get(tree)
        return dag.ordered.from_height(min_height) if dag else iter(())

    def store_entries(
        self, tree: str, store: str, after: OrderKey | None = None
    ) -> Iterator[Entry]:
        dag = self._stores.get((tree, store))
        return iter([self._entries[i] for i in dag.ordered.after(after)] if dag else [])

    def get_local(self, key: str) -> str | None:
        return self._local.get(key)

    def set_local(self, key: str, value: str) -> None:
        self._local[key] = value

    def put_snapshot(self, tree: str, store: str, snapshot: Snapshot) -> bool:
        self._snapshots[tree, store] = snapshot
        return True

    def get_snapshot(self, tree: str, store: str) -> Snapshot | None:
        return self._snapshots.get((tree, store))

    def healthy(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True
        self._entries.clear()
