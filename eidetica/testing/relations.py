"""Which simulated node relates the tree with which, and whether every node still
comes to hold it and to sync it with the rest.

A relation is asked for by one node (``add_tree_sync(peer, tree)`` on ``a`` names
``b``). Once both hold the tree, entries cross it both ways: ``a`` pulls from ``b``
and pushes to it, and ``b`` serves and takes them, since anyone may read. But a node
takes a tree it does not hold only from a peer it asked for it (or, a hub, from
anyone), so a node first comes to hold the tree by pulling along its own relations
from a node that holds it, and a hub by a push from a node that relates it.

The simulation removes a relation, or lets a node go for good, only when the staying
nodes stay *sound*: every one holds the tree or will, by those rules, and the
relations join them all. A node nobody relates the tree with does not sync it, and
the invariants are about the nodes that do.
"""

from __future__ import annotations

from collections.abc import Collection

Pair = tuple[str, str]


class Relations:
    """The relations asked for, as ordered pairs of node names."""

    def __init__(self) -> None:
        self._asked: set[Pair] = set()

    def add(self, a: str, b: str) -> None:
        self._asked.add((a, b))

    def remove(self, a: str, b: str) -> None:
        self._asked.discard((a, b))

    def __contains__(self, pair: object) -> bool:
        return pair in self._asked

    def sound(
        self,
        nodes: Collection[str],
        *,
        holders: Collection[str],
        hub: str | None = None,
        without: Pair | None = None,
    ) -> bool:
        """Whether, among ``nodes`` and with ``without`` taken away, every node comes
        to hold the tree (``holders`` hold it now) and the relations join them all."""
        asked = {pair for pair in self._asked - {without} if set(pair) <= set(nodes)}
        return self._will_hold(asked, nodes, holders, hub) and _joined(asked, nodes)

    @staticmethod
    def _will_hold(
        asked: set[Pair], nodes: Collection[str], holders: Collection[str], hub: str | None
    ) -> bool:
        held = set(holders) & set(nodes)
        while True:
            more = {a for a, b in asked if b in held} | {
                b for a, b in asked if a in held and b == hub
            }
            if more <= held:
                return held == set(nodes)
            held |= more


def _joined(asked: set[Pair], nodes: Collection[str]) -> bool:
    """Whether the relations, taken either way, connect ``nodes``."""
    names = list(nodes)
    reached, frontier = set(names[:1]), names[:1]
    while frontier:
        node = frontier.pop()
        for pair in asked:
            if node in pair:
                other = pair[1] if pair[0] == node else pair[0]
                if other not in reached:
                    reached.add(other)
                    frontier.append(other)
    return reached == set(names)
