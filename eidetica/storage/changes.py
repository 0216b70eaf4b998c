"""Per-tree change notification: ``tree.changes()``, an async iterator that wakes only
when its own tree stores entries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TreeChange:
    """A tree stored entries (committed here or received from a peer)."""

    tree: str
    tips: tuple[str, ...]
    """The tree's tips when the consumer was woken."""
    version: int
    """How many batches the tree has stored since the node opened: a gap between two
    changes read means several were folded into the later one."""


class TreeChanges:
    """The changes of one tree from the moment this was made (its version then), for
    ``async for``; ``changed`` waits for the tree's next version, ``tips`` reads them.

    It never falls behind and holds nothing: each step waits for the tree's next
    change after the last one read, and changes that came meanwhile are folded into
    one (read the tree's state for what they did). It never ends by itself: leave the
    loop, or cancel it.
    """

    def __init__(
        self,
        root_id: str,
        version: int,
        changed: Callable[[str, int], Awaitable[int]],
        tips: Callable[[str], list[str]],
    ) -> None:
        self._root_id = root_id
        self._seen = version
        self._changed = changed
        self._tips = tips

    def __aiter__(self) -> TreeChanges:
        return self

    async def __anext__(self) -> TreeChange:
        self._seen = await self._changed(self._root_id, self._seen)
        return TreeChange(self._root_id, tuple(self._tips(self._root_id)), self._seen)
