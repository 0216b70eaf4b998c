"""The commands the supervisor takes: the seed's SyncCommand set, typed.

Commands that need an answer carry a :class:`Reply`; the rest are fire-and-forget.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eidetica.actors.reply import Reply
from eidetica.actors.retry import RetryItem
from eidetica.protocol.entry import Entry


class _Command(msgspec.Struct, frozen=True):
    """Base of every supervisor command."""


class StartServer(_Command, frozen=True):
    address: str
    reply: Reply[str]


class StopServer(_Command, frozen=True):
    address: str
    reply: Reply[None]


class ConnectToPeer(_Command, frozen=True):
    address: str
    reply: Reply[str]


class AddPeer(_Command, frozen=True):
    peer: str
    address: str
    reply: Reply[None]


class RemovePeer(_Command, frozen=True):
    peer: str
    reply: Reply[None]


class CreateRelationship(_Command, frozen=True):
    peer: str
    tree: str
    reply: Reply[None]


class RemoveRelationship(_Command, frozen=True):
    peer: str
    tree: str
    reply: Reply[None]


class SyncWithPeer(_Command, frozen=True):
    """One full two-way round of every tree shared with the peer; ``reply`` may be None
    for the timer's fire-and-forget syncs."""

    peer: str
    reply: Reply[None] | None = None


class SendEntries(_Command, frozen=True):
    """Push these entries of a tree to a peer now (the seed's SendEntries)."""

    peer: str
    tree: str
    ids: tuple[str, ...]
    reply: Reply[None]


class QueueEntry(_Command, frozen=True):
    """A local commit (from the commit hook): push it to the tree's peers now."""

    tree: str
    entry: Entry


class EntriesReceived(_Command, frozen=True):
    """Entries a peer gave us: offer them on to the tree's other peers."""

    tree: str
    ids: tuple[str, ...]
    source: str


class PushFailed(_Command, frozen=True):
    """A peer actor could not push: queue the entries for a retry."""

    item: RetryItem


class RetryDue(_Command, frozen=True):
    """The retry actor says a failed push should be tried again now."""

    item: RetryItem


class Pushed(_Command, frozen=True):
    """A peer took a push of ``entries`` entries of ``tree``: count it."""

    peer: str
    tree: str
    entries: int


class Served(_Command, frozen=True):
    """A peer's sync request for ``tree`` was answered: count it."""

    peer: str
    tree: str


class RetryEnded(_Command, frozen=True):
    """A queued push needs no more tries: it went through, or it used up its attempts.
    The supervisor forgets its record, so the persisted queue stays the live one."""

    item: RetryItem
    delivered: bool


class CheckConnections(_Command, frozen=True):
    """The connection-check timer fired: probe every peer."""


class SyncDone(_Command, frozen=True):
    """A peer actor finished syncing one tree (ok or not): record cursor and metadata."""

    peer: str
    tree: str
    ok: bool
    tips: tuple[str, ...]
    received: int
    duration: float


class TreesChanged(_Command, frozen=True):
    """A watch on a peer's server says it holds news of these trees: sync them with
    it now. ``reply`` hears when the sync is done (or failed)."""

    peer: str
    trees: tuple[str, ...]
    reply: Reply[None]


class PeerReachable(_Command, frozen=True):
    """A proven peer reached us over a link we can send requests back on (``address``),
    and, with ``tree``, asked for or pushed a tree it may read."""

    peer: str
    address: str
    tree: str | None = None


class LinkClosed(_Command, frozen=True):
    """A two-way transport's link at ``address`` closed (either side, or it died)."""

    address: str
    reason: str


class SyncAll(_Command, frozen=True):
    """The periodic timer fired: sync with every peer."""


class Status(_Command, frozen=True):
    reply: Reply[Any]


class Shutdown(_Command, frozen=True):
    """Stop the engine (leaving ``async with inst.sync()`` does the same)."""


Command = (
    StartServer
    | StopServer
    | ConnectToPeer
    | AddPeer
    | RemovePeer
    | CreateRelationship
    | RemoveRelationship
    | SyncWithPeer
    | SendEntries
    | QueueEntry
    | EntriesReceived
    | PushFailed
    | SyncDone
    | RetryDue
    | RetryEnded
    | Pushed
    | Served
    | CheckConnections
    | TreesChanged
    | PeerReachable
    | LinkClosed
    | SyncAll
    | Status
    | Shutdown
)
