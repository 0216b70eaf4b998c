"""What the sync engine tells its users, as typed events: ``sync.events()`` yields them.

Each is a frozen, tagged ``msgspec.Struct``, so a consumer can ``match`` on its type
and ``msgspec.json.encode`` it as is (the status page and ``eidetica status`` do).
Counts are of entries; bytes are of the entries' encoded form, as they travel.

Events are news, not records: a consumer that falls behind gets :class:`Missed`,
saying how many it lost at that point, and reads the state itself
(``sync.status()``, ``tree.tips()``) to catch up. Nothing in the engine waits for a
consumer.
"""

from __future__ import annotations

import msgspec


class _Event(msgspec.Struct, frozen=True, tag=True, tag_field="event"):
    pass


class PeerLinked(_Event, frozen=True, tag="peer_linked"):
    """A link to ``peer`` came up (``again``: after one was lost)."""

    peer: str
    address: str
    again: bool = False


class PeerLost(_Event, frozen=True, tag="peer_lost"):
    """The link to ``peer`` was lost; ``redialling`` if this node dials it again."""

    peer: str
    reason: str
    redialling: bool = False


class PeerRemoved(_Event, frozen=True, tag="peer_removed"):
    """``peer`` was forgotten, with its relationships."""

    peer: str


class SyncStarted(_Event, frozen=True, tag="sync_started"):
    """A sync of ``tree`` with ``peer`` began."""

    peer: str
    tree: str


class SyncProgress(_Event, frozen=True, tag="sync_progress"):
    """A page of a sync arrived: ``entries`` and ``bytes`` received so far in this sync,
    and ``expected`` entries in all when the peer said how many it plans to send (a
    hint from the peer, for display only; None when it did not say)."""

    peer: str
    tree: str
    entries: int
    bytes: int
    expected: int | None = None


class SyncFinished(_Event, frozen=True, tag="sync_finished"):
    """A sync of ``tree`` with ``peer`` ended. ``complete``: both sides held ``tips``
    when it ended."""

    peer: str
    tree: str
    received: int
    bytes: int
    sent: int
    round_trips: int
    seconds: float
    complete: bool
    tips: tuple[str, ...] = ()
    at: float = 0.0
    """Wall-clock time (``time.time()``) it ended."""


class SyncFailed(_Event, frozen=True, tag="sync_failed"):
    """A sync of ``tree`` with ``peer`` failed; what it stored is kept."""

    peer: str
    tree: str
    error: str


class EntriesReceived(_Event, frozen=True, tag="entries_received"):
    """This node stored ``count`` new entries of ``tree`` that ``peer`` sent (by a
    sync, a push or a watch)."""

    peer: str
    tree: str
    count: int
    bytes: int


class EntriesSent(_Event, frozen=True, tag="entries_sent"):
    """This node sent ``count`` entries of ``tree`` to ``peer``: pushed, in a sync it
    ran, or in its answers to the peer's requests (a sync the peer ran, a watch)."""

    peer: str
    tree: str
    count: int
    bytes: int


class PushFailed(_Event, frozen=True, tag="push_failed"):
    """A push of ``count`` entries of ``tree`` to ``peer`` failed; it waits in the
    retry queue."""

    peer: str
    tree: str
    count: int
    attempts: int


class RetryDropped(_Event, frozen=True, tag="retry_dropped"):
    """A push was given up after ``attempts`` (or its peer or tree went away); the
    periodic sync carries its entries instead."""

    peer: str
    tree: str
    count: int
    attempts: int


class Missed(_Event, frozen=True, tag="missed"):
    """This consumer fell behind: ``count`` events were dropped here."""

    count: int


Event = (
    PeerLinked
    | PeerLost
    | PeerRemoved
    | SyncStarted
    | SyncProgress
    | SyncFinished
    | SyncFailed
    | EntriesReceived
    | EntriesSent
    | PushFailed
    | RetryDropped
    | Missed
)
"""Every event the engine publishes."""

__all__ = [
    "EntriesReceived",
    "EntriesSent",
    "Event",
    "Missed",
    "PeerLinked",
    "PeerLost",
    "PeerRemoved",
    "PushFailed",
    "RetryDropped",
    "SyncFailed",
    "SyncFinished",
    "SyncProgress",
    "SyncStarted",
]
