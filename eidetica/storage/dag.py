"""Walks over a tree's DAG that need only heights and parents."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from eidetica.storage.backend import Backend


def ancestors(backend: Backend, heads: Iterable[str], stop: Iterable[str] = ()) -> list[str]:
    """Entries reachable from ``heads`` (inclusive) and not from ``stop`` (inclusive).

    Entries are visited highest first. Every child is higher than its parents, so by
    the time an entry is visited every path to it has been seen and its mark is final;
    the walk ends once only entries reachable from ``stop`` are left to visit. Ids that
    are not stored are skipped. The result is in (height, id) order, parents first.
    """
    marks: dict[str, bool] = {}  # id -> reachable from stop
    parents: dict[str, tuple[str, ...]] = {}
    queue: list[tuple[int, str]] = []
    live = 0  # queued entries not reachable from stop

    def push(ids: Iterable[str], stopped: bool) -> None:
        nonlocal live
        fresh = [i for i in ids if i not in marks]
        for entry_id, meta in backend.meta(fresh).items():
            marks[entry_id] = stopped
            parents[entry_id] = meta.parents
            live += not stopped
            heapq.heappush(queue, (-meta.height, entry_id))
        for entry_id in ids:
            if stopped and marks.get(entry_id) is False:
                marks[entry_id] = True
                live -= 1

    push(list(stop), True)
    push(list(heads), False)
    found: list[tuple[int, str]] = []
    while live:
        negative_height, entry_id = heapq.heappop(queue)
        stopped = marks[entry_id]
        if not stopped:
            live -= 1
            found.append((-negative_height, entry_id))
        push(parents.pop(entry_id), stopped)
    found.sort()
    return [entry_id for _, entry_id in found]
