"""One tree of a backend, seen as the sync planner's :class:`DagView`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from eidetica.errors import EntryNotFound
from eidetica.protocol.dagview import Node
from eidetica.storage.backend import Backend


class TreeView:
    """Reads of one tree, answered by the backend."""

    def __init__(self, backend: Backend, tree: str) -> None:
        self._backend = backend
        self.tree = tree

    def tips(self) -> list[str]:
        return self._backend.tips(self.tree)

    def nodes(self, ids: Iterable[str]) -> Mapping[str, Node]:
        return {
            entry_id: Node(meta.height, meta.parents)
            for entry_id, meta in self._backend.meta(ids).items()
            if meta.tree == self.tree
        }

    def raw(self, ids: Iterable[str]) -> list[bytes]:
        found: list[bytes] = []
        for entry_id in ids:
            entry = self._backend.get(entry_id)
            if entry is None or entry.tree_id != self.tree:
                raise EntryNotFound(f"tree {self.tree} holds no entry {entry_id}")
            found.append(entry.raw)
        return found

    def ids_from(self, min_height: int) -> Iterator[str]:
        return self._backend.tree_ids(self.tree, min_height)
