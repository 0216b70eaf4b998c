"""The engine: what the supervisor actor thinks with.

``Engine.handle(event, now)`` takes one event (a command, or something the shell saw)
and returns the effects the shell must carry out, in order. It owns the peer table
(:mod:`.peers`), the link rules (:mod:`.linkbook`), the cursors and the relationships
in memory; it reads no clock, socket or storage, so every rule here runs, and is
tested, without an event loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import eidetica.events as news
from eidetica.actors.engine import events as ev
from eidetica.actors.engine import linkbook
from eidetica.actors.engine.effects import (
    Announce,
    Answer,
    Dial,
    DropLink,
    Effect,
    Fail,
    ForgetRetries,
    Persist,
    PersistOp,
    Publish,
    Queue,
    StartPeer,
    StopDial,
    StopPeer,
    ToRetry,
    UseLink,
)
from eidetica.actors.engine.jobs import ProbeJob, PushJob, SyncJob
from eidetica.actors.engine.peers import REDIALLED, PeerRecord, PeerState
from eidetica.actors.engine.retries import RetryItem
from eidetica.actors.engine.view import EngineView
from eidetica.errors import EideticaError, NotShared, PeerNotLinked, SyncError, UnknownPeer
from eidetica.protocol.entry import is_entry_id

log = logging.getLogger("eidetica.actors.supervisor")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's own bounds and waits (seconds)."""

    redial_min: float = 1.0
    """Before the first redial of a lost link; each failure doubles it..."""
    redial_max: float = 60.0
    """...up to this."""
    jitter: float = 0.1
    """Each wait is stretched by up to this fraction, so peers do not dial in step."""
    max_strangers: int = 1024
    """Peers kept in memory that we neither chose nor can reach (one-shot callers)."""


@dataclass(frozen=True, slots=True)
class Restored:
    """A peer as the sync state kept it."""

    key: str
    address: str
    trees: frozenset[str]


Handler = Callable[[Any, float], None]


class Engine:
    """The sync engine's state and rules; see the module docstring."""

    def __init__(
        self,
        me: str,
        *,
        families: dict[str, str],
        reply_schemes: set[str],
        config: EngineConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._me = me
        self._families = families
        """Address scheme -> the transport that serves it (``ws-in`` is ``ws``'s)."""
        self._config = config or EngineConfig()
        self._rng = rng or random.Random()
        self._book = linkbook.LinkBook(set(reply_schemes))
        self.peers: dict[str, PeerRecord] = {}
        self.cursors: dict[tuple[str, str], tuple[str, ...]] = {}
        self._synced: dict[tuple[str, str], tuple[str, ...]] = {}
        """The cursor each (peer, tree) had from its last sync (what is on disk): a
        push may move ``cursors`` on, in memory only, and must not make the next sync
        that ends there skip its records."""
        self.last_sync: dict[tuple[str, str], float] = {}
        self.sync_tree = ""
        """The node's own sync tree: never pushed (its commits are bookkeeping)."""
        self._out: list[Effect] = []
        self._view: EngineView | None = None
        self._handlers: dict[type, Handler] = {
            ev.ConnectToPeer: self._connect,
            ev.AddPeer: self._add_peer,
            ev.RemovePeer: self._remove_peer,
            ev.CreateRelationship: self._relate,
            ev.RemoveRelationship: self._unrelate,
            ev.SyncWithPeer: self._sync_with,
            ev.SendEntries: self._send_entries,
            ev.QueueEntry: self._committed,
            ev.EntriesReceived: self._received,
            ev.PeerReachable: self._reachable,
            ev.TreeTaken: self._taken,
            ev.TreesChanged: self._changed,
            ev.SyncAll: self._sync_all,
            ev.CheckConnections: self._check,
            ev.LinkUp: self._link_up,
            ev.DialFailed: self._dial_failed,
            ev.LinkClosed: self._link_closed,
            ev.PushFailed: self._push_failed,
            ev.RetryDue: self._retry_due,
            ev.RetryEnded: self._retry_ended,
            ev.Pushed: self._counted,
            ev.Served: self._counted,
            ev.SyncDone: self._sync_done,
        }

    # The surface the shell uses.

    def restore(
        self,
        peers: Iterable[Restored],
        cursors: dict[tuple[str, str], tuple[str, ...]],
        removed: Iterable[str],
        sync_tree: str,
    ) -> list[Effect]:
        """Start from what the sync state kept: dial every kept peer with an address."""
        self._out = []
        self._book.removed = set(removed)
        self.cursors = dict(cursors)
        self._synced = dict(cursors)
        self.sync_tree = sync_tree
        for kept in peers:
            record = self._add(kept.key, PeerState.DOWN)
            record.kept, record.trees = True, set(kept.trees)
            if kept.address:
                record.dial = kept.address
                record.move(PeerState.DIALLING)
                self._dial(record, 0.0)
        self._publish()
        return self._flush()

    def handle(self, event: ev.Event, now: float) -> list[Effect]:
        """The effects of one event, in the order the shell must carry them out. An
        event that cannot be done fails its reply (if it has one) and changes nothing."""
        self._out = []
        try:
            self._handlers[type(event)](event, now)
        except EideticaError as exc:
            reply = getattr(event, "reply", None)
            if reply is None:
                raise
            self._out = [Fail(reply, exc)]
        return self._flush()

    def view(self) -> EngineView:
        """What the services may read: an immutable snapshot, rebuilt after changes."""
        if self._view is None:
            self._view = EngineView.of(self.peers.values(), self._book.removed)
        return self._view

    @property
    def removed(self) -> frozenset[str]:
        return frozenset(self._book.removed)

    # Commands.

    def _connect(self, event: ev.ConnectToPeer, now: float) -> None:
        self._do(Dial(event.address, None, reply=event.reply, chosen=True))

    def _add_peer(self, event: ev.AddPeer, now: float) -> None:
        self._unremove(event.peer)
        self._persist("add_peer", event.peer, event.address)
        record = self.peers.get(event.peer) or self._add(event.peer, PeerState.DOWN)
        record.dial, record.kept = event.address, True
        if not record.up:
            record.move(PeerState.DIALLING)
            self._dial(record, 0.0)
        self._answer(event.reply, None)

    def _remove_peer(self, event: ev.RemovePeer, now: float) -> None:
        record = self._known(event.peer)
        self._persist("remove_peer", event.peer)
        self._persist("set_removed", event.peer, True)
        self._book.removed.add(event.peer)
        self._forget(record)
        self._do(ForgetRetries(event.peer))
        self._do(Announce(news.PeerRemoved(event.peer)))
        self._answer(event.reply, None)

    def _relate(self, event: ev.CreateRelationship, now: float) -> None:
        if not is_entry_id(event.tree):
            raise SyncError(f"not a tree id: {event.tree!r}")
        self._keep_tree(self._known(event.peer), event.tree)
        self._answer(event.reply, None)

    def _unrelate(self, event: ev.RemoveRelationship, now: float) -> None:
        record = self._known(event.peer)
        self._persist("remove_relationship", event.peer, event.tree)
        record.trees.discard(event.tree)
        self._publish()
        self._answer(event.reply, None)

    def _sync_with(self, event: ev.SyncWithPeer, now: float) -> None:
        if event.tree is None:
            self._queue_sync(self._linked(event.peer), event.reply)
            return
        if event.tree not in self._known(event.peer).trees:
            raise NotShared(f"{event.peer} does not sync {event.tree}: add_tree_sync first")
        self._queue_sync(self._linked(event.peer), event.reply, only={event.tree})

    def _send_entries(self, event: ev.SendEntries, now: float) -> None:
        record = self._known(event.peer)
        if event.tree not in record.trees:
            raise NotShared(f"{event.peer} does not sync {event.tree}: add_tree_sync first")
        self._do(Queue(self._linked(event.peer).key, PushJob(event.tree, event.ids)))
        self._answer(event.reply, None)

    # Notices.

    def _committed(self, event: ev.QueueEntry, now: float) -> None:
        if event.tree != self.sync_tree:
            self._push(event.tree, (event.entry.id,), source=None)

    def _received(self, event: ev.EntriesReceived, now: float) -> None:
        self._push(event.tree, event.ids, source=event.source)
        if event.ids:
            self._both_hold(event.source, event.tree, event.ids[-1])

    def _both_hold(self, peer: str, tree: str, entry: str) -> None:
        """The peer and this node both hold ``entry`` of ``tree`` (it sent it, or took
        it whole): a cursor as good as a sync's, kept in memory only (a write per push
        would grow the sync tree), so status shows a peer a push brought up to date
        as in step, and the next sync starts from there."""
        record = self.peers.get(peer)
        if record is not None and tree in record.trees:
            self.cursors[(peer, tree)] = (entry,)

    def _push(self, tree: str, ids: tuple[str, ...], source: str | None) -> None:
        """Offer entries to every linked peer of the tree but the one they came from."""
        for record in self.peers.values():
            if record.reachable and record.key != source and tree in record.trees:
                self._do(Queue(record.key, PushJob(tree, ids)))

    def _taken(self, event: ev.TreeTaken, now: float) -> None:
        if event.peer not in self._book.removed:
            record = self.peers.get(event.peer) or self._stranger(event.peer)
            self._keep_tree(record, event.tree)

    def _changed(self, event: ev.TreesChanged, now: float) -> None:
        record = self._linked(event.peer)
        self._queue_sync(record, event.reply, only=set(event.trees))

    def _sync_all(self, event: ev.SyncAll, now: float) -> None:
        for record in self.peers.values():
            if record.reachable and record.trees:
                self._queue_sync(record, None)

    def _check(self, event: ev.CheckConnections, now: float) -> None:
        for record in self.peers.values():
            if record.up:
                self._do(Queue(record.key, ProbeJob()))

    # Links.

    def _reachable(self, event: ev.PeerReachable, now: float) -> None:
        """A proven peer reached us: register it, learn the tree it asked for, and link
        back over a link it opened unless we keep a better link to it already."""
        peer, address, tree = event.peer, event.address, event.tree
        if peer in self._book.removed:
            return
        record = self.peers.get(peer)
        if record is not None and tree is not None and tree not in record.trees:
            record.trees.add(tree)  # learned: it syncs this tree with us
            self._publish()
        if record is not None and tree is not None:
            tree = None
        if address is None:  # a one-shot caller: known, never dialled back
            if record is None:
                self._stranger(peer)
            return
        if not self._book.is_reply(address):
            return  # over a link we dialled: we are linked over it already
        if tree is None:  # a fresh handshake over it: a refused link-back may work now
            self._book.refused.pop(address, None)
        if record is not None and record.up and not self._better(record, address):
            return
        if self._book.offer(peer, address, tree):
            self._do(Dial(address, peer))

    def _better(self, record: PeerRecord, address: str) -> bool:
        """Whether a link at ``address`` should replace the record's live link."""
        assert record.link is not None
        return record.link != address and self._keep(record.link, address, record.key) == address

    def _link_up(self, event: ev.LinkUp, now: float) -> None:
        learned = self._book.linked(event.address)
        key, address = event.peer, event.address
        if key in self._book.removed and not event.chosen:
            self._do(DropLink(address, close=not self._book.is_reply(address)))
        elif (
            (record := self.peers.get(key)) is not None
            and record.up
            and not self._better(record, address)
        ):
            self._keep_old_link(record, address, learned)
        else:
            if event.chosen:
                self._unremove(key)
            for other in [r for r in self.peers.values() if r.link == address and r.key != key]:
                self._lose(other, f"{key} answered at its address", now)  # one peer a link
            self._take_link(
                self.peers.get(key) or self._add(key, PeerState.DOWN), address, learned, now
            )
        if event.reply is not None:
            self._answer(event.reply, key)

    def _keep_old_link(self, record: PeerRecord, address: str, learned: set[str]) -> None:
        """A second link to a linked peer lost the choice: drop it, keep what it taught.
        One at the live link's very address is that connection: it stays open."""
        ours = not self._book.is_reply(address)
        self._do(DropLink(address, close=ours and address != record.link))
        record.trees |= learned
        if not self._book.is_reply(address) and (record.dial != address or not record.kept):
            record.dial, record.kept = address, True  # remember where it listens
            self._persist("add_peer", record.key, address)
        self._publish()

    def _take_link(self, record: PeerRecord, address: str, learned: set[str], now: float) -> None:
        """Make the link at ``address`` the peer's. A peer that was not linked is
        caught up at once: it may have been away, or we were, and a commit made while
        the link came up went nowhere."""
        catch_up = not record.up
        again = record.state is PeerState.LOST
        if again:
            log.info("linked to peer %s again, at %s", record.key, address)
        elif catch_up:
            log.info("linked to peer %s at %s", record.key, address)
        if catch_up:
            self._do(Announce(news.PeerLinked(record.key, address, again=again)))
        previous = record.link
        if record.state in REDIALLED:
            self._do(StopDial(record.key))  # linked by whichever way came first
        else:
            record.wait = 0.0
        record.trees |= learned
        if not self._book.is_reply(address) and (record.dial != address or not record.kept):
            record.dial, record.kept = address, True
            self._persist("add_peer", record.key, address)
        record.move(PeerState.UP)
        record.link, record.since = address, now
        self._start(record)
        record.handed = True
        close = previous is not None and not self._book.is_reply(previous)
        self._do(UseLink(record.key, address, close_previous=close))
        if catch_up:
            self._queue_sync(record, None)
        self._publish()

    def _dial_failed(self, event: ev.DialFailed, now: float) -> None:
        if event.peer is not None and self._book.is_reply(event.address):
            self._book.failed(event.address, still_open=event.still_open)
        error = event.error
        if not isinstance(error, EideticaError):
            error = SyncError(f"{event.address}: {error!r}")
        if event.reply is not None:
            self._do(Fail(event.reply, error))
        if not event.chosen:  # the operator hears of their own attempts; the log of ours
            log.warning("could not reach %s at %s: %s", event.peer, event.address, error)
        record = self.peers.get(event.peer or "")
        if record is not None and record.state in REDIALLED and record.dial == event.address:
            self._dial(record, self._backoff(record.wait * 2))

    def _link_closed(self, event: ev.LinkClosed, now: float) -> None:
        self._book.closed(event.address)
        for record in [r for r in self.peers.values() if r.link == event.address]:
            self._lose(record, event.reason, now)
        self._publish()

    def _lose(self, record: PeerRecord, reason: str, now: float) -> None:
        """The peer's link is gone: it is redialled if we know where, kept as down if
        the operator related it, or else forgotten (it only ever dialled us)."""
        self._do(Announce(news.PeerLost(record.key, reason, redialling=record.dial is not None)))
        if record.dial is not None:
            log.info("link to peer %s lost (%s); redialling %s", record.key, reason, record.dial)
            flapped = now - record.since < self._config.redial_max
            record.move(PeerState.LOST)
            self._dial(record, self._backoff(record.wait * 2 if flapped else 0.0))
        elif record.kept:
            log.info("peer %s went away (%s); it will dial again", record.key, reason)
            record.move(PeerState.DOWN)
        else:
            log.info("peer %s went away (%s)", record.key, reason)
            self._forget(record)

    # Pushes that failed, and their retries.

    def _push_failed(self, event: ev.PushFailed, now: float) -> None:
        item = event.item
        if item.peer in self.peers:
            self._persist("keep_retry", item)
            self._do(ToRetry(item))
            failed = news.PushFailed(item.peer, item.tree, len(item.entry_ids), item.attempts + 1)
            self._do(Announce(failed))

    def _retry_due(self, event: ev.RetryDue, now: float) -> None:
        """Try a queued push again; its record stays on disk until the push goes
        through, is dropped, or has nowhere to go, so a crash loses none."""
        item = event.item
        record = self.peers.get(item.peer)
        if record is None or item.tree not in record.trees:
            self._persist("drop_retry", item.id)  # the peer or the tree is gone
            self._do(Announce(_dropped(item)))
        elif record.reachable:
            self._do(Queue(record.key, PushJob(item.tree, item.entry_ids, item)))
        else:
            self._do(ToRetry(item))  # not back yet: wait longer

    def _retry_ended(self, event: ev.RetryEnded, now: float) -> None:
        self._persist("drop_retry", event.item.id)
        if not event.delivered:
            self._do(Announce(_dropped(event.item)))

    # What the peer actors report.

    def _counted(self, event: ev.Pushed | ev.Served, now: float) -> None:
        if isinstance(event, ev.Pushed) and event.head:
            self._both_hold(event.peer, event.tree, event.head)
        record = self.peers.get(event.peer)
        if record is None or not record.kept:
            return  # a peer that only dialled us leaves no record
        if isinstance(event, ev.Pushed):
            self._persist("record_push", event.peer, event.tree, event.entries)
        else:
            self._persist("record_served", event.peer, event.tree)

    def _sync_done(self, event: ev.SyncDone, now: float) -> None:
        """Keep a finished tree sync: cursor, metadata, history. A sync that moved
        nothing and ended where the last one did writes nothing."""
        record = self.peers.get(event.peer)
        if record is None:
            return  # from the actor of a peer removed since
        key = (event.peer, event.tree)
        log.info(
            "synced %s with %s: %s, %d entries in %.2f s",
            event.tree,
            event.peer,
            "done" if event.ok else "failed",
            event.received,
            event.duration,
        )
        if event.ok:
            self.last_sync[key] = event.at
            if not event.received and self._synced.get(key) == event.tips:
                self.cursors[key] = event.tips
                return
            self.cursors[key] = self._synced[key] = event.tips
        if not record.kept:
            return
        if event.ok:
            self._persist("set_cursor", *key, event.tips, event.at, event.received)
        self._persist(
            "record_sync",
            event.peer,
            event.ok,
            event.received,
            event.duration * 1000,
            keywords=(("tree", event.tree),),
        )

    # Helpers.

    def _known(self, peer: str) -> PeerRecord:
        record = self.peers.get(peer)
        if record is None:
            raise UnknownPeer(f"unknown peer {peer}: connect to it first")
        return record

    def _linked(self, peer: str) -> PeerRecord:
        record = self._known(peer)
        if record.reachable:
            return record
        if record.state in REDIALLED:
            raise PeerNotLinked(f"peer {peer} is not linked yet: it is being dialled; try again")
        raise PeerNotLinked(f"peer {peer} is not linked: it has not dialled in since it left")

    def _add(self, key: str, state: PeerState) -> PeerRecord:
        record = PeerRecord(key, state)
        self.peers[key] = record
        return record

    def _stranger(self, key: str) -> PeerRecord:
        """Register a proven peer we cannot dial; the oldest such go beyond the cap."""
        record = self._add(key, PeerState.DOWN)
        strangers = [r for r in self.peers.values() if r.state is PeerState.DOWN and not r.kept]
        for old in strangers[: max(0, len(strangers) - self._config.max_strangers)]:
            self._forget(old)
        self._publish()
        return record

    def _forget(self, record: PeerRecord) -> None:
        del self.peers[record.key]
        if not record.kept:  # nothing of it is kept: its cursors go too
            for tree in record.trees:
                self.cursors.pop((record.key, tree), None)
                self._synced.pop((record.key, tree), None)
                self.last_sync.pop((record.key, tree), None)
        if record.actor:
            close = record.link is not None and not self._book.is_reply(record.link)
            self._do(StopPeer(record.key, close_link=close))
        self._publish()

    def _keep_tree(self, record: PeerRecord, tree: str) -> None:
        self._persist("add_peer", record.key)  # one that dialled us may be new to it
        self._persist("add_relationship", record.key, tree)
        record.trees.add(tree)
        record.kept = True
        self._publish()

    def _unremove(self, peer: str) -> None:
        if peer in self._book.removed:
            self._book.removed.discard(peer)
            self._persist("set_removed", peer, False)

    def _start(self, record: PeerRecord) -> None:
        if not record.actor:
            record.actor = True
            self._do(StartPeer(record.key))

    def _dial(self, record: PeerRecord, wait: float) -> None:
        """Dial the peer where it listens after ``wait`` (stretched by the jitter)."""
        assert record.dial is not None
        self._start(record)
        record.wait = wait
        after = wait * (1 + self._rng.uniform(0, self._config.jitter))
        self._do(Dial(record.dial, record.key, after=after, owned=True))

    def _backoff(self, wait: float) -> float:
        return min(max(wait, self._config.redial_min), self._config.redial_max)

    def _keep(self, current: str, offered: str, peer: str) -> str:
        """Of two links to ``peer``, the one to keep (:func:`linkbook.keep`); between
        different transports, the newer."""
        if self._family(current) != self._family(offered):
            return offered
        return linkbook.keep(
            current, offered, mine=self._me, peer=peer, reply=self._book.reply_schemes
        )

    def _family(self, address: str) -> str:
        scheme = address.split("://", 1)[0]
        return self._families.get(scheme, scheme)

    def _queue_sync(
        self, record: PeerRecord, reply: ev.Replier | None, only: set[str] | None = None
    ) -> None:
        trees = tuple(sorted(record.trees if only is None else record.trees & only))
        if not trees and reply is None:
            return
        common = tuple((tree, self.cursors.get((record.key, tree), ())) for tree in trees)
        self._do(Queue(record.key, SyncJob(trees, reply, common)))

    def _persist(
        self, op: PersistOp, *args: Any, keywords: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        self._do(Persist(op, args, keywords))

    def _answer(self, reply: ev.Replier, value: Any) -> None:
        self._do(Answer(reply, value))

    def _publish(self) -> None:
        """The view changed: the shell publishes it again (once per event)."""
        self._view = None
        if not any(isinstance(effect, Publish) for effect in self._out):
            self._do(Publish())

    def _do(self, effect: Effect) -> None:
        self._out.append(effect)

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out


def _dropped(item: RetryItem) -> news.RetryDropped:
    return news.RetryDropped(item.peer, item.tree, len(item.entry_ids), item.attempts)
