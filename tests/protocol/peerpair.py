"""Two sides of a sync driven against each other with no event loop, like h11's tests.

Each side is an in-memory DAG of one tree that stores what it receives through an
:class:`Intake` (so only verified, parent-complete entries reach it). Every message
goes through a codec, so the figures count real bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.entry import Entry, decode_entry
from eidetica.protocol.intake import Intake
from eidetica.protocol.messages import Ack, Message, SendEntries, SyncRequest, SyncResponse
from eidetica.protocol.reconcile import Responder, SyncRound, acknowledge
from eidetica.storage.backend import Record
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.treeview import TreeView


class Side:
    """One node's copy of a tree."""

    def __init__(self, tree: str, entries: Iterable[Entry]) -> None:
        self.tree = tree
        self.backend = MemoryBackend()
        self.backend.put([Record(entry, ()) for entry in entries])
        self.view = TreeView(self.backend, tree)
        self.intake = Intake()
        self.redundant = 0
        """Entries received that this side already held."""
        self.held_after: list[int] = []
        """How many entries waited for parents after each message arrived."""

    def receive(self, raws: Iterable[bytes]) -> list[str]:
        """Store what arrived; return the parents still missing."""
        raws = list(raws)
        self.redundant += len(self.backend.has(decode_entry(raw).id for raw in raws))
        rejected = self.intake.offer(self.tree, raws)
        assert not rejected, rejected
        ready = self.intake.release(self.tree, self.backend.has)
        self.backend.put([Record(entry, ()) for entry in ready])
        self.held_after.append(self.intake.held(self.tree))
        return sorted(self.intake.missing(self.tree, self.backend.has))

    def ids(self) -> set[str]:
        return {e.id for e in self.backend.tree_entries(self.tree)}


@dataclass
class Stats:
    round_trips: int = 0
    bytes_sent: int = 0
    """Bytes of every message both ways, in the binary codec."""
    entry_bytes: int = 0
    """Bytes of the entries carried."""
    complete: bool = False
    repairs: int = 0
    messages: list[str] = field(default_factory=list)
    summaries: int = 0
    """Messages that carried a summary (either way)."""
    page_bytes: list[int] = field(default_factory=list)
    """Entry bytes of each ``SyncResponse``, in order."""


def carry(message: Message, stats: Stats) -> Message:
    """Encode and decode ``message`` as a transport would, counting its bytes."""
    data = MSGPACK.encode(message)
    stats.bytes_sent += len(data)
    stats.messages.append(type(message).__name__)
    body = MSGPACK.decode(data).body
    entries = getattr(body, "entries", ())
    stats.summaries += getattr(body, "summary", None) is not None
    stats.entry_bytes += sum(len(raw) for raw in entries)
    return body


def sync(
    initiator: Side,
    responder: Side,
    *,
    cursor: Iterable[str] = (),
    serving: Responder | None = None,
    max_messages: int = 10_000,
) -> Stats:
    """One full sync, ``initiator`` asking ``responder`` (with ``serving``'s plans, a
    fresh :class:`Responder` by default) from ``cursor``; returns its figures."""
    stats = Stats()
    serving = Responder() if serving is None else serving
    round_ = SyncRound(initiator.view, initiator.tree, common=cursor)
    message: SyncRequest | SendEntries | None = round_.first()
    for _ in range(max_messages):
        if message is None:
            break
        request = carry(message, stats)
        answer: SyncResponse | Ack
        if isinstance(request, SyncRequest):
            answer = serving.answer(responder.view, request, peer="initiator")
        else:
            assert isinstance(request, SendEntries)
            missing = responder.receive(request.entries)
            answer = acknowledge(
                responder.view, request, stored=0, rejected=0, held=0, missing=missing
            )
        answer = carry(answer, stats)  # type: ignore[assignment]
        if isinstance(answer, SyncResponse):
            stats.page_bytes.append(sum(map(len, answer.entries)))
        message = round_.next(answer, initiator.receive(answer.entries))
    stats.round_trips = round_.round_trips
    stats.complete = round_.complete
    stats.repairs = round_.repairs
    return stats
