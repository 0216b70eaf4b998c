"""One tree of a backend, seen as the sync planner's :class:`DagView`: without its
dead entries (:mod:`eidetica.storage.live`), when it is given them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from eidetica.errors import EntryNotFound
from eidetica.protocol.dagview import Node
from eidetica.storage.backend import Backend
from eidetica.storage.live import Live


class TreeView:
    """Reads of one tree, answered by the backend."""

    def __init__(self, backend: Backend, tree: str, live: Live | None = None) -> None:
        self._backend = backend
        self.tree = tree
        self._live = live
        self._dead = frozenset() if live is None else live.dead

    def tips(self) -> list[str]:
        if self._live is not None:
            return list(self._live.tips)
        return self._backend.tips(self.tree)

    def nodes(self, ids: Iterable[str]) -> Mapping[str, Node]:
        return {
            entry_id: Node(meta.height, meta.parents)
            for entry_id, meta in self._backend.meta(ids).items()
            if meta.tree == self.tree and entry_id not in self._dead
        }

    def raw(self, ids: Iterable[str]) -> list[bytes]:
        found: list[bytes] = []
        for entry_id in ids:
            entry = self._backend.get(entry_id)
            if entry is None or entry.tree_id != self.tree or entry_id in self._dead:
                raise EntryNotFound(f"tree {self.tree} holds no entry {entry_id}")
            found.append(entry.raw)
        return found

    def ids_from(self, min_height: int) -> Iterator[str]:
        ids = self._backend.tree_ids(self.tree, min_height)
        return (i for i in ids if i not in self._dead) if self._dead else ids
