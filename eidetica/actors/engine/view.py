"""The engine's view for the services: immutable, replaced whole after each change.

A server's service answers requests on its own tasks; it never asks the supervisor
anything. It reads the view the engine last published instead: which trees a peer
syncs with us (so a tree we do not hold yet may be pushed by it), and whether a
request tells the engine something it does not know (so a busy peer posts no notice
per request).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from eidetica.actors.engine.peers import PeerRecord


@dataclass(frozen=True, slots=True)
class EngineView:
    relations: frozenset[tuple[str, str]] = frozenset()
    """(peer, tree) pairs this node syncs."""
    linked: frozenset[str] = frozenset()
    """Peers with a live link."""
    known: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    """Peers the operator removed: their requests are not news."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Peer -> how many trees it syncs with us."""

    @classmethod
    def of(cls, records: Iterable[PeerRecord], removed: Iterable[str]) -> EngineView:
        records = list(records)
        return cls(
            relations=frozenset((r.key, tree) for r in records for tree in r.trees),
            linked=frozenset(r.key for r in records if r.up),
            known=frozenset(r.key for r in records),
            removed=frozenset(removed),
            counts={r.key: len(r.trees) for r in records},
        )

    def trees(self, peer: str) -> frozenset[str]:
        """The trees this node syncs with ``peer``."""
        return frozenset(tree for key, tree in self.relations if key == peer)

    def trees_of(self, peer: str) -> int:
        """How many trees ``peer`` syncs with us."""
        return self.counts.get(peer, 0)

    def relates(self, peer: str, tree: str) -> bool:
        """Whether this node syncs ``tree`` with ``peer``."""
        return (peer, tree) in self.relations

    def heard(self, peer: str, tree: str | None, *, two_way: bool) -> bool:
        """Whether a request from ``peer`` tells the engine nothing new: the peer was
        removed, or is known and syncs ``tree`` (if given) and, over a link that can
        carry requests back, is linked already. A handshake over such a link is always
        news: a link-back refused before may work now."""
        if peer in self.removed:
            return True
        if two_way:
            return tree is not None and self.relates(peer, tree) and peer in self.linked
        return peer in self.known and (tree is None or self.relates(peer, tree))
