"""The supervisor's inbox: the engine's events (the seed's SyncCommand set, typed,
and what actors report), plus the commands the shell answers itself.

Commands that need an answer carry a :class:`Reply`; the rest are fire-and-forget.
"""

from __future__ import annotations

from typing import Any

from eidetica.actors.engine.events import (
    AddPeer,
    CheckConnections,
    ConnectToPeer,
    CreateRelationship,
    DialFailed,
    EntriesReceived,
    Event,
    LinkClosed,
    LinkUp,
    PeerReachable,
    Pushed,
    PushFailed,
    QueueEntry,
    RemovePeer,
    RemoveRelationship,
    RetryDue,
    RetryEnded,
    SendEntries,
    Served,
    SyncAll,
    SyncDone,
    SyncWithPeer,
    TreesChanged,
    TreeTaken,
    _Event,
)
from eidetica.actors.reply import Reply

__all__ = [
    "AddPeer",
    "CheckConnections",
    "Command",
    "ConnectToPeer",
    "CreateRelationship",
    "DialFailed",
    "EntriesReceived",
    "Event",
    "LinkClosed",
    "LinkUp",
    "PeerReachable",
    "PushFailed",
    "Pushed",
    "QueueEntry",
    "RemovePeer",
    "RemoveRelationship",
    "RetryDue",
    "RetryEnded",
    "SendEntries",
    "Served",
    "Shutdown",
    "StartServer",
    "Status",
    "StopServer",
    "SyncAll",
    "SyncDone",
    "SyncWithPeer",
    "TreeTaken",
    "TreesChanged",
]


class StartServer(_Event, frozen=True):
    address: str
    reply: Reply[str]


class StopServer(_Event, frozen=True):
    address: str
    reply: Reply[None]


class Status(_Event, frozen=True):
    reply: Reply[Any]


class Shutdown(_Event, frozen=True):
    """Stop the engine (leaving ``async with inst.sync()`` does the same)."""


ShellCommand = StartServer | StopServer | Status | Shutdown
"""What the shell does itself: servers are I/O, status joins the shell's view to the
engine's, and shutdown is the shell's cancel scope."""

Command = Event | ShellCommand
