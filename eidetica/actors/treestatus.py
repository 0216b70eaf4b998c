"""Each synced tree's size, tips and per-peer lag, for ``sync.status()``.

Status is read often (``eidetica status``, the status page polls it every second),
so everything here is cheap and bounded: a tree's count and a peer's lag are worked
out again only when the tree's tips or the peer's cursor moved (the tips name the
whole DAG: storage holds no entry without its parents), and a lag is counted up to
:data:`LAG_CAP` entries, past which it is reported as at least that many.

A peer's lag is read from its cursor, the tips both sides held after the last
complete sync: the entries of ours that are not the cursor's tips or below them are
the ones the peer had not seen then. It says nothing of what the peer holds that we
do not (we cannot know without asking).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from eidetica.actors.engine.status import TreeLag, TreeStatus
from eidetica.storage.backend import Backend

LAG_CAP = 10_000
"""Entries counted for one lag at most."""

_CACHE_SIZE = 4096
"""Results kept at once (by tree and tips); a safety net, cleared when full."""


class TreeStatuses:
    """Works out :class:`TreeStatus` for a node's synced trees; keeps what it counted."""

    def __init__(self, backend: Backend, tips: Callable[[str], list[str]] | None = None) -> None:
        self._backend = backend
        self._tips = tips or backend.tips
        """A tree's tips as its syncs name them (``Instance.sync_tips``)."""
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}
        self._lags: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[int, bool]] = {}

    def of(
        self,
        peers_by_tree: Mapping[str, Iterable[str]],
        cursors: Mapping[tuple[str, str], tuple[str, ...]],
        last_sync: Mapping[tuple[str, str], float],
        held: Mapping[str, int] | None = None,
    ) -> dict[str, TreeStatus]:
        """The status of each tree in ``peers_by_tree`` (root id -> its peers)."""
        if len(self._counts) > _CACHE_SIZE or len(self._lags) > _CACHE_SIZE:
            self._counts.clear()
            self._lags.clear()
        statuses: dict[str, TreeStatus] = {}
        for tree in sorted(peers_by_tree):
            tips = tuple(self._tips(tree))
            lags = {}
            for peer in sorted(peers_by_tree[tree]):
                cursor = cursors.get((peer, tree))
                if cursor is None:
                    lags[peer] = TreeLag(in_step=False, behind=None)
                    continue
                behind, capped = self._lag(tree, tips, tuple(sorted(cursor)))
                lags[peer] = TreeLag(
                    in_step=tuple(sorted(cursor)) == tips,
                    behind=behind,
                    capped=capped,
                    last_sync=last_sync.get((peer, tree)),
                )
            statuses[tree] = TreeStatus(
                root=tree,
                entries=self._count(tree, tips),
                tips=list(tips),
                peers=lags,
                held=(held or {}).get(tree, 0),
            )
        return statuses

    def _count(self, tree: str, tips: tuple[str, ...]) -> int:
        key = (tree, tips)
        if key not in self._counts:
            self._counts[key] = sum(1 for _ in self._backend.tree_ids(tree))
        return self._counts[key]

    def _lag(self, tree: str, tips: tuple[str, ...], cursor: tuple[str, ...]) -> tuple[int, bool]:
        key = (tree, tips, cursor)
        if key not in self._lags:
            self._lags[key] = self._count_lag(tree, cursor)
        return self._lags[key]

    def _count_lag(self, tree: str, cursor: tuple[str, ...]) -> tuple[int, bool]:
        """Entries of ``tree`` that are neither the ``cursor`` tips nor below them,
        counting at most :data:`LAG_CAP`.

        Only entries at or above the lowest cursor tip can be such entries, so those
        are the candidates; the cursor's ancestry is walked down to that height."""
        known = self._backend.meta(cursor)
        floor = min((meta.height for meta in known.values()), default=0)
        candidates: set[str] = set()
        for entry_id in self._backend.tree_ids(tree, floor):
            candidates.add(entry_id)
            if len(candidates) > LAG_CAP + len(cursor):
                return LAG_CAP, True
        below: set[str] = set()
        frontier = set(known)
        while frontier:
            below |= frontier
            parents = {
                parent
                for meta in self._backend.meta(frontier).values()
                if meta.height > floor
                for parent in meta.parents
            }
            frontier = (parents & candidates) - below
        behind = len(candidates - below)
        return min(behind, LAG_CAP), behind > LAG_CAP
