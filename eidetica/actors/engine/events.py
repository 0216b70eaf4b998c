"""What the engine is told: the commands of the seed's SyncCommand set, and what the
shell saw happen (a link came up or closed, a dial failed, a job finished).

Commands that need an answer carry a :class:`Replier`; the engine answers each with
exactly one :class:`~eidetica.actors.engine.effects.Answer` or ``Fail`` effect, and
never calls it itself.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from eidetica.actors.engine.retries import RetryItem
from eidetica.protocol.entry import Entry


class Replier(Protocol):
    """Where a command's answer goes (``eidetica.actors.reply.Reply`` in the shell)."""

    def set(self, value: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class _Event(msgspec.Struct, frozen=True):
    """Base of everything the engine handles."""


# Commands from the Sync frontend.


class ConnectToPeer(_Event, frozen=True):
    address: str
    reply: Replier


class AddPeer(_Event, frozen=True):
    peer: str
    address: str
    reply: Replier


class RemovePeer(_Event, frozen=True):
    peer: str
    reply: Replier


class CreateRelationship(_Event, frozen=True):
    peer: str
    tree: str
    reply: Replier


class RemoveRelationship(_Event, frozen=True):
    peer: str
    tree: str
    reply: Replier


class SyncWithPeer(_Event, frozen=True):
    """One full two-way round of every tree shared with the peer (or of ``tree`` only)."""

    peer: str
    reply: Replier | None = None
    tree: str | None = None


class SendEntries(_Event, frozen=True):
    """Push these entries of a tree to a peer now (the seed's SendEntries)."""

    peer: str
    tree: str
    ids: tuple[str, ...]
    reply: Replier


# Notices from hooks, services and timers: fire-and-forget.


class QueueEntry(_Event, frozen=True):
    """A local commit (from the commit hook): push it to the tree's peers now."""

    tree: str
    entry: Entry


class EntriesReceived(_Event, frozen=True):
    """Entries a peer gave us: offer them on to the tree's other peers."""

    tree: str
    ids: tuple[str, ...]
    source: str


class PeerReachable(_Event, frozen=True):
    """A proven peer reached us: after its handshake (no ``tree``), and when it asked
    for or pushed a tree it may read. ``address`` is a link we can send requests back
    on, or None over a one-shot transport (HTTP)."""

    peer: str
    address: str | None
    tree: str | None = None


class TreeTaken(_Event, frozen=True):
    """The admission policy let ``peer`` bring in ``tree``, which this node did not
    hold: relate the two, so the tree flows through this node from now on."""

    peer: str
    tree: str


class TreesChanged(_Event, frozen=True):
    """A watch on a peer we dialled over HTTP says it holds news of these trees: sync
    them with it now. ``reply``, if given, hears when that sync is done (or failed)."""

    peer: str
    trees: tuple[str, ...]
    reply: Replier | None = None


class SyncAll(_Event, frozen=True):
    """The periodic timer fired: sync with every linked peer."""


class CheckConnections(_Event, frozen=True):
    """The connection-check timer fired: probe every linked peer."""


# What the shell and the actors saw.


class LinkUp(_Event, frozen=True):
    """A dial's handshake succeeded: ``peer`` is proven at ``address``."""

    address: str
    peer: str
    reply: Replier | None = None
    chosen: bool = False
    """The operator asked for this link (``connect``)."""
    link: object = None
    """The shell's link object, handed back in ``UseLink``; the engine never reads it."""


class DialFailed(_Event, frozen=True):
    """A dial failed before its handshake completed."""

    address: str
    peer: str | None
    error: Exception
    reply: Replier | None = None
    chosen: bool = False
    still_open: bool = False
    """The link at ``address`` (a reply address) is still open."""


class LinkClosed(_Event, frozen=True):
    """A two-way link closed (either side, or it died)."""

    address: str
    reason: str


class PushFailed(_Event, frozen=True):
    """A peer actor could not push: queue the entries for a retry."""

    item: RetryItem


class RetryDue(_Event, frozen=True):
    """The retry actor says a failed push should be tried again now."""

    item: RetryItem


class RetryEnded(_Event, frozen=True):
    """A queued push needs no more tries: it went through, or used up its attempts."""

    item: RetryItem
    delivered: bool


class Pushed(_Event, frozen=True):
    """A peer took a push of ``entries`` entries of ``tree``: count it. ``head``: the
    last entry pushed, when the peer stored the push whole (so it holds it and all
    below it); empty otherwise."""

    peer: str
    tree: str
    entries: int
    head: str = ""


class Served(_Event, frozen=True):
    """A peer's sync request for ``tree`` was answered: count it."""

    peer: str
    tree: str


class SyncDone(_Event, frozen=True):
    """A peer actor finished syncing one tree (ok or not)."""

    peer: str
    tree: str
    ok: bool
    tips: tuple[str, ...]
    received: int
    duration: float
    at: float = 0.0
    """When it ended (Unix time, for the records)."""


Event = (
    ConnectToPeer
    | AddPeer
    | RemovePeer
    | CreateRelationship
    | RemoveRelationship
    | SyncWithPeer
    | SendEntries
    | QueueEntry
    | EntriesReceived
    | PeerReachable
    | TreeTaken
    | TreesChanged
    | SyncAll
    | CheckConnections
    | LinkUp
    | DialFailed
    | LinkClosed
    | PushFailed
    | RetryDue
    | RetryEnded
    | Pushed
    | Served
    | SyncDone
)
