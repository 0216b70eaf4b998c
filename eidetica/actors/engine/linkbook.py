"""The supervisor's book of two-way links: which to keep, and what it knows of links
that are not (or not yet) a peer's.

Over a two-way transport (WebSocket, sim) a peer that dials us can be sent requests
back over its own link, at a reply address (``ws-in://N``, ``sim-in://N``). The
supervisor links back over such an offer, learns which trees the peer syncs from its
requests, keeps one link per peer when two nodes dial each other, and redials links
it loses. This module holds the rules and the bookkeeping, with no I/O, so that they
can be read (and tested) apart from the actors; every set in it is bounded by the
links open now or by :data:`MAX_OFFERS`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

V = TypeVar("V")

MAX_OFFERS = 4096
"""Reply addresses remembered at once (being linked over, refused, learned on)."""
MAX_LEARNED = 1024
"""Trees remembered for one link before we have linked back over it."""


def keep(current: str, offered: str, *, mine: str, peer: str, reply: set[str]) -> str:
    """Of two links to ``peer``, the one to keep.

    The newer one (``offered``), except that between a link we dialled and one the
    peer dialled, the link dialled by the smaller key wins. Both ends choose alike,
    so two nodes that dial each other end with one link. ``reply`` is the set of
    reply address schemes: a link at such an address is one the peer dialled.
    """
    theirs_now, theirs_offered = _is_reply(current, reply), _is_reply(offered, reply)
    if theirs_now == theirs_offered:
        return offered
    ours, theirs = (offered, current) if theirs_now else (current, offered)
    return ours if mine < peer else theirs


def _is_reply(address: str, reply: set[str]) -> bool:
    return address.split("://", 1)[0] in reply


@dataclass
class LinkBook:
    """Links peers opened that are not a peer's link (yet), and peers being redialled
    or removed."""

    reply_schemes: set[str]
    linking: OrderedDict[str, str] = field(default_factory=OrderedDict)
    """Reply address -> the peer we are handshaking back with over it."""
    refused: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Reply addresses over which a handshake back failed: the peer takes no requests
    on links it dialled. Not tried again while the link lasts."""
    learned: OrderedDict[str, set[str]] = field(default_factory=OrderedDict)
    """Reply address -> trees its peer asked for before we had linked back."""
    redialling: set[str] = field(default_factory=set)
    """Peers whose lost link is being redialled (one redial loop per peer)."""
    removed: set[str] = field(default_factory=set)
    """Peers the operator removed: not registered again unless dialled on purpose."""

    def is_reply(self, address: str) -> bool:
        """Whether ``address`` names a link the peer dialled."""
        return _is_reply(address, self.reply_schemes)

    def offer(self, peer: str, address: str, tree: str | None) -> bool:
        """A proven ``peer`` reached us over the link at reply address ``address``
        (asking for ``tree``, if given) and is not a peer yet: note the tree, and say
        whether to link back now. One peer per link: a second key proving itself
        over a link already being linked is ignored."""
        if peer in self.removed:
            return False
        owner = self.linking.get(address)
        if (owner is not None and owner != peer) or address in self.refused:
            return False  # not this peer's link, or it takes no requests from us
        learned = _remember(self.learned, address, set())
        if tree is not None and len(learned) < MAX_LEARNED:
            learned.add(tree)
        if owner is not None:
            return False  # being linked back already
        _remember(self.linking, address, peer)
        return True

    def linked(self, address: str) -> set[str]:
        """The link at ``address`` became a peer's: the trees learned over it."""
        self.linking.pop(address, None)
        return self.learned.pop(address, set())

    def failed(self, address: str, *, still_open: bool) -> None:
        """Linking back over ``address`` failed; remember it while the link is open."""
        self.linking.pop(address, None)
        self.learned.pop(address, None)
        if still_open:
            _remember(self.refused, address, None)

    def closed(self, address: str) -> None:
        """The link at ``address`` closed: forget everything about it."""
        self.linking.pop(address, None)
        self.refused.pop(address, None)
        self.learned.pop(address, None)


def _remember(book: OrderedDict[str, V], key: str, value: V) -> V:
    """``book[key]``, set to ``value`` if absent; the oldest entries go beyond
    :data:`MAX_OFFERS`."""
    if key not in book:
        book[key] = value
        while len(book) > MAX_OFFERS:
            book.popitem(last=False)
    return book[key]
