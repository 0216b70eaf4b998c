"""What the sync planner reads of a tree, and the one walk over it.

The planner is pure: it never touches storage directly. A :class:`DagView` is the
read-only window onto one tree that storage (or a test's in-memory DAG) provides.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import msgspec


class Node(msgspec.Struct, frozen=True, gc=False):
    """An entry as the DAG walks see it (a struct: a walk makes one per entry)."""

    height: int
    parents: tuple[str, ...]


class DagView(Protocol):
    """Read access to one tree's DAG."""

    def tips(self) -> list[str]:
        """The tree's tips, sorted."""
        ...

    def nodes(self, ids: Iterable[str]) -> Mapping[str, Node]:
        """Heights and parents of those of ``ids`` this side holds."""
        ...

    def raw(self, ids: Iterable[str]) -> list[bytes]:
        """The canonical bytes of entries this side holds, in the order asked."""
        ...

    def ids_from(self, min_height: int) -> Iterator[str]:
        """Ids of the entries of height ``min_height`` and above."""
        ...


def walk(
    view: DagView,
    heads: Iterable[str],
    stop: Iterable[str] = (),
    held: Callable[[str, Node], bool] | None = None,
    limit: int | None = None,
) -> list[str]:
    """Entries reachable from ``heads`` (inclusive) and not from ``stop`` (inclusive).

    ``held(id, node)``, when given, marks more entries as already held by whoever
    the walk is for; the walk stops at them as at ``stop``, since a holder of an entry
    holds its ancestors too.

    Entries are visited highest first. Every child is higher than its parents, so by
    the time an entry is visited every path to it has been seen and its mark is final;
    the walk ends once only stopped entries are left. Ids this side does not hold are
    skipped. The result is in (height, id) order, parents first.

    With ``limit``, the walk gives up once it has found more than ``limit`` entries:
    a result longer than ``limit`` says only that there are more.
    """
    marks: dict[str, bool] = {}  # id -> stopped
    parents: dict[str, tuple[str, ...]] = {}
    queue: list[tuple[int, str]] = []
    live = 0  # queued entries not stopped

    def push(ids: Iterable[str], stopped: bool) -> None:
        nonlocal live
        ids = list(ids)
        for entry_id, node in view.nodes(i for i in ids if i not in marks).items():
            mark = stopped or (held is not None and held(entry_id, node))
            marks[entry_id] = mark
            parents[entry_id] = node.parents
            live += not mark
            heapq.heappush(queue, (-node.height, entry_id))
        if stopped:
            for entry_id in ids:
                if marks.get(entry_id) is False:
                    marks[entry_id] = True
                    live -= 1

    push(stop, True)
    push(heads, False)
    found: list[tuple[int, str]] = []
    while live:
        negative_height, entry_id = heapq.heappop(queue)
        stopped = marks[entry_id]
        if not stopped:
            live -= 1
            found.append((-negative_height, entry_id))
            if limit is not None and len(found) > limit:
                break
        push(parents.pop(entry_id), stopped)
    found.sort()
    return [entry_id for _, entry_id in found]
