"""Per-tree change notification: ``tree.changes()``, an async iterator that wakes only
when its own tree stores entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eidetica.storage.tree import Tree


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
    """The changes of one tree from the moment this was made, for ``async for``.

    It never falls behind and holds nothing: each step waits for the tree's next
    change after the last one read, and changes that came meanwhile are folded into
    one (read the tree's state for what they did). It never ends by itself: leave the
    loop, or cancel it.
    """

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._seen = tree.instance.tree_version(tree.root_id)

    def __aiter__(self) -> TreeChanges:
        return self

    async def __anext__(self) -> TreeChange:
        instance, root_id = self._tree.instance, self._tree.root_id
        self._seen = await instance.tree_changed(root_id, self._seen)
        return TreeChange(root_id, tuple(instance.backend.tips(root_id)), self._seen)
