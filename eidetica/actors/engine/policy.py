"""Which trees a node takes in from a peer it was not told to sync them with.

By default (``"chosen"``) a node takes in a tree it does not hold only from a peer
the operator related that very tree with. A hub takes in its clients' trees:
``"any"`` takes a tree from any proven peer, a collection of keys from those peers
only, and a callable ``(peer_key, tree_id) -> bool`` (or an awaitable of bool)
decides each case. Under any policy but ``"chosen"``, quotas bound what one peer can
bring: trees it syncs with us, and bytes of entries stored into trees it brought,
so one client cannot fill the hub's disk. (Keys are free to make, so a hub open to
"any" also relies on its connection, session and rate limits against many keys.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from eidetica.errors import InvalidValue, QuotaExceeded
from eidetica.protocol.keys import check_public_key

Decide = Callable[[str, str], bool | Awaitable[bool]]
AcceptTrees = str | Collection[str] | Decide
"""``"chosen"``, ``"any"``, a collection of peer keys, or a callable."""


@dataclass(frozen=True)
class TreeQuota:
    """What one peer may bring in under a policy other than ``"chosen"``."""

    max_trees: int = 100
    """Trees a peer syncs with this node, counting those it brought."""
    max_bytes: int = 1 << 30
    """Bytes of entries stored from a peer into the trees it brought (per run)."""
    max_peers: int = 4096
    """Peers whose bytes are counted at once; the oldest count goes beyond."""


@dataclass
class TreePolicy:
    """A node's admission rule for trees, and the bytes each peer brought so far."""

    rule: Decide | None = None
    """None: ``"chosen"``, take in nothing unasked."""
    quota: TreeQuota = field(default_factory=TreeQuota)
    _brought: dict[str, str] = field(default_factory=dict)
    """Tree -> the peer that brought it in (this run)."""
    _bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, accept: AcceptTrees, quota: TreeQuota | None = None) -> TreePolicy:
        """Read a user's ``accept_trees``; a one-line :class:`InvalidValue` if it is
        none of the forms this takes."""
        quota = quota or TreeQuota()
        if accept == "chosen":
            return cls(None, quota)
        if accept == "any":
            return cls(lambda peer, tree: True, quota)
        if callable(accept):
            return cls(accept, quota)
        if isinstance(accept, str) or not isinstance(accept, Collection):
            raise InvalidValue(
                f"accept_trees must be 'chosen', 'any', peer keys or a callable, not {accept!r}"
            )
        keys = frozenset(check_public_key(key) for key in accept)
        return cls(lambda peer, tree: peer in keys, quota)

    @property
    def chosen_only(self) -> bool:
        return self.rule is None

    def asks(self, peer: str, tree: str, related: int) -> bool | Awaitable[bool]:
        """Whether to take ``tree`` in from ``peer``, which syncs ``related`` trees with
        us already; :class:`QuotaExceeded` past its share."""
        if self.rule is None:
            return False
        if related >= self.quota.max_trees:
            raise QuotaExceeded(
                f"{peer} syncs {related} trees with this node already, its most "
                f"(max_trees {self.quota.max_trees})"
            )
        return self.rule(peer, tree)

    def brought(self, peer: str, tree: str) -> None:
        """``peer`` brought ``tree`` in: what it stores there counts to its bytes."""
        self._brought.setdefault(tree, peer)

    def over(self, peer: str, tree: str) -> bool:
        """Whether ``peer`` used up its bytes and brought ``tree``: then this node does
        not pull more of the tree from it either."""
        return self._brought.get(tree) == peer and self._bytes.get(peer, 0) >= self.quota.max_bytes

    def pulled(self, peer: str, tree: str, size: int) -> None:
        """Count ``size`` bytes this node pulled from ``peer`` into ``tree`` (a pull
        is counted after the round, so it may pass the quota by one round's worth)."""
        if self._brought.get(tree) == peer:
            self._bytes[peer] = self._bytes.pop(peer, 0) + size

    def charge(self, peer: str, tree: str, size: int) -> None:
        """Count ``size`` bytes ``peer`` wants stored in ``tree``; refuse them with
        :class:`QuotaExceeded` past its share (trees it did not bring are free)."""
        if self._brought.get(tree) != peer:
            return
        used = self._bytes.pop(peer, 0) + size
        if used > self.quota.max_bytes:
            self._bytes[peer] = used - size
            raise QuotaExceeded(
                f"{peer} brought {used - size} bytes in already; this node takes at most "
                f"{self.quota.max_bytes} from one peer"
            )
        self._bytes[peer] = used  # re-inserted: the newest, evicted last
        while len(self._bytes) > self.quota.max_peers:
            del self._bytes[next(iter(self._bytes))]
