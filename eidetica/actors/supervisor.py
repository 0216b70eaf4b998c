"""The supervisor: the seed's BackgroundSync, the single owner of all sync state.

It owns the peers, their tree relationships and the servers; it starts one peer
actor per peer, one timer actor and one server actor per listening address, all in
its nursery. Everything else talks to it through its inbox. Network work happens in
the peer actors and in short-lived tasks, never in the supervisor's own loop, so a
slow peer never delays a command.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from eidetica.actors import commands as cmd
from eidetica.actors import linkbook
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.link import Link
from eidetica.actors.peer import (
    Job,
    PeerHealth,
    ProbeJob,
    PushJob,
    SyncJob,
    run_peer,
)
from eidetica.actors.reply import Reply
from eidetica.actors.retry import (
    ForgetPeer,
    RetryItem,
    RetryMessage,
    RetryQueue,
    RetrySnapshot,
    run_retry,
)
from eidetica.actors.service import HandshakeGate, SyncService
from eidetica.actors.state import RetryRecord, SyncState
from eidetica.actors.timer import run_timer
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.base import Transport, TwoWay
from eidetica.actors.watch import run_watch, watched
from eidetica.actors.watching import Watching
from eidetica.errors import EideticaError, SyncError, TreeNotFound, first_leaf
from eidetica.protocol.auth import Permission, permission_of
from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.protocol.entry import Entry, is_entry_id
from eidetica.storage.instance import Instance
from eidetica.storage.tree import Tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncConfig:
    """Intervals (seconds of trio time) and bounds of the engine."""

    periodic_sync: float = 300.0
    connection_check: float = 60.0
    retry_sweep: float = 30.0
    max_retries: int = 10
    retry_jitter: float = 0.1
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_restarts: int = 5
    """Crashes of one actor before it is reported and left down."""
    inbox_size: int = 256
    peer_inbox_size: int = 64
    redial_min: float = 1.0
    """Seconds before the first redial of a peer whose two-way link closed; each failed
    redial doubles the wait, up to ``redial_max``, stretched by up to ``retry_jitter``."""
    redial_max: float = 60.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    """What the node's servers let clients hold (connections, time, bytes)."""


@dataclass
class _Peer:
    key: str
    address: str
    """Where its link goes: what we dialled, or the reply address of a link it opened."""
    link: Link
    jobs: trio.MemorySendChannel[Job]
    queued: trio.MemoryReceiveChannel[Job]
    """The other end of ``jobs``, which its actor reads: jobs not started yet can be
    moved from it to the actor of the link that replaces this one."""
    dial: str | None = None
    """An address we can dial it at, if we know one (a peer that only ever dialled us
    has none, and is forgotten when its link closes unless ``kept``)."""
    kept: bool = False
    """It is in the sync tree (we dialled it, or the operator related it)."""
    lost: bool = False
    """Its two-way link closed; it is being redialled, or forgotten."""
    since: float = field(default_factory=trio.current_time)
    """When this link came up (trio time)."""
    redial_wait: float = 0.0
    """The wait before the redial that made this link (0: not a redial). A link that
    dies soon after a redial is redialled after twice that, so a peer that answers
    and then drops every time is not dialled at the first step forever."""
    health: PeerHealth = field(default_factory=PeerHealth)
    trees: set[str] = field(default_factory=set)
    dropped: int = 0


class _PeerUp(cmd._Command, frozen=True):
    """A connection task finished its handshake (internal)."""

    link: Link
    reply: Reply[str]
    resync: bool = False
    """Sync its trees at once: it came back after its link was lost."""
    chosen: bool = False
    """The operator asked for this link (``connect``)."""


class Supervisor:
    """Runs the engine; see the module docstring."""

    def __init__(
        self, instance: Instance, transports: dict[str, Transport], config: SyncConfig
    ) -> None:
        self._instance = instance
        self._transports = dict(transports)
        self._two_way = [t for t in transports.values() if isinstance(t, TwoWay)]
        for two_way in self._two_way:  # a link a peer opened is reached by its own scheme
            self._transports.setdefault(two_way.reply_scheme, two_way)
        self._config = config
        self.inbox, self._commands = trio.open_memory_channel[cmd.Command | _PeerUp](
            config.inbox_size
        )
        self._peers: dict[str, _Peer] = {}
        self._servers: dict[str, trio.CancelScope] = {}
        self._server_health: dict[str, ServerHealth] = {}
        self._handshake_gate = HandshakeGate(config.limits.handshake_rate)
        """One handshake rate for all the node's listeners."""
        self._watching = Watching(instance, config.limits, pushes=self._pushes)
        """The watches held for clients, one set of caps for all the node's listeners."""
        self._services: dict[str, SyncService] = {}
        self._retries = RetryQueue(max_attempts=config.max_retries, jitter=config.retry_jitter)
        """Filled with persisted retries at start, then the retry actor's alone."""
        self._retry_view = RetrySnapshot()
        """What the retry actor last published of its queue, for status."""
        self._to_retry, self._retry_inbox = trio.open_memory_channel[RetryMessage](
            config.inbox_size
        )
        self._state: SyncState | None = None
        self.stopped = trio.Event()
        """Set once the engine has stopped: callers stop waiting for answers."""
        self._cursors: dict[tuple[str, str], tuple[str, ...]] = {}
        self._last_sync: dict[tuple[str, str], float] = {}
        self._reconnecting: dict[str, tuple[str, set[str]]] = {}
        """Peers known but not connected (after a restart, or unreachable), with their
        address and trees; dialled again at every connection check."""
        self._book = linkbook.LinkBook({two_way.reply_scheme for two_way in self._two_way})
        self._rng = random.Random()
        self.crashed: list[str] = []
        """Actors that kept crashing and were left down (reported in status)."""
        self.dropped_notices = 0
        self._nursery: trio.Nursery | None = None

    def notify(self, command: cmd.Command) -> None:
        """Fire-and-forget: a full inbox drops the notice (counted, logged), never blocks.
        The next periodic sync finds whatever a dropped notice was about."""
        try:
            self.inbox.send_nowait(command)
        except trio.WouldBlock:
            self.dropped_notices += 1
            log.warning("sync inbox full: dropped %s", type(command).__name__)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the engine has stopped

    def on_commit(self, tree: Tree, entry: Entry) -> None:
        """The commit hook: post the new entry for pushing (not our own sync state)."""
        if self._state is None or tree.root_id != self._state.tree.root_id:
            self.notify(cmd.QueueEntry(tree.root_id, entry))

    async def _resume(self) -> None:
        """Reconnect to the peers the sync tree names and requeue its retries."""
        state = self._require_state()
        for record in (await state.peers()).values():
            bad = [tree for tree in record.trees if not is_entry_id(tree)]
            if bad:  # written before ids were checked: skipped, not fatal
                log.warning("peer %s: ignoring stored relationships %s", record.key, bad)
            for tree in set(record.trees) - set(bad):
                cursor = await state.cursor(record.key, tree)
                if cursor is not None:
                    self._cursors[record.key, tree] = cursor.last_synced_tips
            address = record.addresses[0] if record.addresses else ""
            self._reconnecting[record.key] = (address, set(record.trees) - set(bad))
            if address:  # a peer with no address is linked again when it dials us
                self._redial_now(address, record.key)
        now = trio.current_time()
        for retry_id, saved in (await state.retries()).items():
            item = RetryItem(retry_id, saved.peer, saved.tree, saved.entry_ids, saved.attempts)
            self._retries.restore(item, now)

    def _require_state(self) -> SyncState:
        if self._state is None:
            raise SyncError("the sync engine is not running")
        return self._state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled, resuming the peers, relationships and retries that the
        sync tree kept from the last run."""
        self._state = await SyncState.open(self._instance)
        self._book.removed = self._state.removed()
        back = self._service(MSGPACK)  # answers requests on the links we dialled
        self._services[""] = back  # served at no address of ours
        for two_way in self._two_way:
            two_way.attach(
                back.handle,
                lambda address, reason: self.notify(cmd.LinkClosed(address, reason)),
            )
        try:
            await self._run(task_status)
        finally:
            for two_way in self._two_way:
                two_way.detach()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._resume()
            schedules = [
                (self._config.periodic_sync, cmd.SyncAll),
                (self._config.connection_check, cmd.CheckConnections),
            ]
            await nursery.start(run_timer, self.inbox.clone(), schedules)
            await nursery.start(
                self._keep_running,
                "retry",
                lambda: run_retry(
                    self._retries,
                    self._retry_inbox,
                    self._retry_due,
                    dropped=self._retry_dropped,
                    publish=self._retry_published,
                    sweep=self._config.retry_sweep,
                ),
            )
            task_status.started()
            try:
                async for command in self._commands:
                    try:
                        await self._handle(command)
                    except EideticaError as exc:
                        reply = getattr(command, "reply", None)
                        if isinstance(reply, Reply):
                            reply.fail(exc)
                        else:
                            log.warning("%s failed: %s", type(command).__name__, exc)
            finally:
                self._stop_taking_commands()
                self.stopped.set()

    def _stop_taking_commands(self) -> None:
        """Close the inbox and fail the replies of commands still in it, so no caller
        waits for an engine that has stopped."""
        self._commands.close()
        stopped = SyncError("the sync engine stopped")
        for known in self._peers.values():
            known.jobs.close()
        while True:
            try:
                pending = self._commands.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            reply = getattr(pending, "reply", None)
            if isinstance(reply, Reply):
                reply.fail(stopped)

    async def _handle(self, command: cmd.Command | _PeerUp) -> None:  # noqa: PLR0915 (one dispatch)
        match command:
            case cmd.StartServer():
                command.reply.set(await self._start_server(command.address))
            case cmd.StopServer():
                scope = self._servers.pop(command.address, None)
                if scope is None:
                    raise SyncError(f"no server at {command.address}")
                self._server_health.pop(command.address, None)
                scope.cancel()
                command.reply.set(None)
            case cmd.ConnectToPeer():
                self._spawn().start_soon(
                    partial(self._connect, command.address, command.reply, chosen=True)
                )
            case _PeerUp():
                command.reply.set(
                    await self._peer_up(command.link, resync=command.resync, chosen=command.chosen)
                )
            case cmd.PeerReachable():
                self._reachable(command.peer, command.address, command.tree)
            case cmd.LinkClosed():
                self._link_closed(command.address, command.reason)
            case cmd.RemovePeer():
                self._trees_of(command.peer)  # unknown peers are an error
                await self._require_state().remove_peer(command.peer)
                self._require_state().set_removed(command.peer, True)
                self._book.removed.add(command.peer)
                self._reconnecting.pop(command.peer, None)
                known = self._peers.pop(command.peer, None)
                if known is not None:
                    known.jobs.close()
                with contextlib.suppress(trio.WouldBlock):  # else dropped when due
                    self._to_retry.send_nowait(ForgetPeer(command.peer))
                command.reply.set(None)
            case cmd.CreateRelationship():
                if not is_entry_id(command.tree):
                    raise SyncError(f"not a tree id: {command.tree!r}")
                trees = self._trees_of(command.peer)
                state = self._require_state()
                await state.add_peer(command.peer)  # one that dialled us may be new to it
                await state.add_relationship(command.peer, command.tree)
                trees.add(command.tree)
                if command.peer in self._peers:
                    self._peers[command.peer].kept = True
                command.reply.set(None)
            case cmd.RemoveRelationship():
                trees = self._trees_of(command.peer)
                await self._require_state().remove_relationship(command.peer, command.tree)
                trees.discard(command.tree)
                command.reply.set(None)
            case cmd.SyncWithPeer():
                await self._queue_sync(self._known(command.peer), command.reply)
            case cmd.TreesChanged():
                await self._queue_sync(self._known(command.peer), command.reply, command.trees)
            case cmd.SyncAll():
                for known in self._peers.values():
                    if known.trees:
                        await self._queue_sync(known, None)
            case cmd.SyncDone():
                if command.peer in self._peers:  # not from an actor of a removed peer
                    await self._record(command)
            case cmd.QueueEntry():
                entry = command.entry
                for known in list(self._peers.values()):
                    if await self._shares(known, command.tree):
                        self._queue(known, PushJob(command.tree, (entry.id,), (entry.raw,)))
            case cmd.SendEntries():
                known = self._known(command.peer)
                if not await self._shares(known, command.tree):
                    raise SyncError(f"{command.peer} does not sync or may not read {command.tree}")
                self._queue(known, self._push_job(command.tree, command.ids))
                command.reply.set(None)
            case cmd.PushFailed() if command.item.peer in self._peers:
                item = command.item
                record = RetryRecord(item.peer, item.tree, item.entry_ids, item.attempts + 1)
                await self._require_state().put_retry(item.id, record)
                try:
                    self._to_retry.send_nowait(item)
                except trio.WouldBlock:
                    log.warning("retry queue full: the periodic sync will repair %s", item)
            case cmd.RetryDue():
                await self._retry(command.item)
            case cmd.RetryEnded():
                await self._require_state().drop_retry(command.item.id)
            case cmd.Pushed() | cmd.Served() if self._keeps(command.peer):
                await self._count(command)
            case cmd.Pushed() | cmd.Served():
                pass  # a peer that only dialled us leaves no record
            case cmd.PushFailed():
                pass  # from the actor of a peer removed since
            case cmd.CheckConnections():
                for known in list(self._peers.values()):  # a closure whose notice was lost
                    if not known.lost and not self._is_open(known.address):
                        self._link_closed(known.address, "found closed at a connection check")
                for known in self._peers.values():
                    self._queue(known, ProbeJob())
                for key, (address, _) in self._reconnecting.items():
                    if address:
                        self._redial_now(address, key)
            case cmd.EntriesReceived():
                await self._forward(command.tree, command.ids, command.source)
            case cmd.Status():
                command.reply.set(self._status())
            case cmd.AddPeer():
                self._book.removed.discard(command.peer)
                self._require_state().set_removed(command.peer, False)
                await self._require_state().add_peer(command.peer, command.address)
                trees = self._reconnecting.get(command.peer, ("", set()))[1]
                self._reconnecting[command.peer] = (command.address, trees)
                self._spawn().start_soon(self._connect, command.address, None, command.peer)
                command.reply.set(None)
            case cmd.Shutdown():
                self._spawn().cancel_scope.cancel()
            case _:
                raise SyncError(f"unknown command {command!r}")

    async def _forward(self, tree: str, ids: tuple[str, ...], source: str) -> None:
        """Offer entries received from ``source`` to the tree's other peers."""
        for known in list(self._peers.values()):
            if known.key == source or not await self._shares(known, tree):
                continue
            self._queue(known, self._push_job(tree, ids))

    def _push_job(self, tree: str, ids: tuple[str, ...], retry: RetryItem | None = None) -> PushJob:
        entries = [self._instance.backend.get(entry_id) for entry_id in ids]
        present = [entry for entry in entries if entry is not None]
        return PushJob(tree, tuple(e.id for e in present), tuple(e.raw for e in present), retry)

    async def _shares(self, known: _Peer, tree: str) -> bool:
        """Whether ``tree`` goes to this peer: it is related, and the tree's settings let
        the peer's proven key read it (a relationship alone never leaks a tree)."""
        if tree not in known.trees:
            return False
        try:
            settings = await (await self._instance.open_tree(tree)).settings()
        except TreeNotFound:
            return True  # nothing of it here to leak: syncing can only pull it in
        level = permission_of(settings, known.key)
        return level is not None and level >= Permission.READ

    async def _queue_sync(
        self, known: _Peer, reply: Reply[None] | None, only: tuple[str, ...] | None = None
    ) -> None:
        wanted = known.trees if only is None else known.trees.intersection(only)
        trees = tuple(sorted([t for t in wanted if await self._shares(known, t)]))
        common = tuple((tree, self._cursors.get((known.key, tree), ())) for tree in trees)
        self._queue(known, SyncJob(trees, reply, common))

    async def _record(self, done: cmd.SyncDone) -> None:
        """Keep a finished tree sync in the sync tree: cursor, metadata, history.

        A sync that moved nothing and ended where the last one did writes nothing:
        with many peers and a periodic sync, recording every idle round would grow
        the sync tree by signed entries that say nothing new.
        """
        key = (done.peer, done.tree)
        idle = done.ok and not done.received and self._cursors.get(key) == done.tips
        if done.ok:
            self._last_sync[key] = time.time()
        if idle:
            return
        if done.ok:
            self._cursors[key] = done.tips
        known = self._peers.get(done.peer)
        if known is None or not known.kept:
            return  # a peer that only dialled us leaves nothing in the sync tree
        state = self._require_state()
        if done.ok:
            await state.set_cursor(done.peer, done.tree, done.tips, time.time(), done.received)
        await state.record_sync(
            done.peer, done.ok, done.received, done.duration * 1000, tree=done.tree
        )

    def _keeps(self, peer: str) -> bool:
        """Whether the node keeps records of ``peer`` (one it chose, not a stranger)."""
        known = self._peers.get(peer)
        return known is not None and known.kept

    async def _count(self, command: cmd.Pushed | cmd.Served) -> None:
        state = self._require_state()
        if isinstance(command, cmd.Pushed):
            await state.record_push(command.peer, command.tree, command.entries)
        else:
            await state.record_served(command.peer, command.tree)

    async def _retry(self, item: RetryItem) -> None:
        """Try a queued push again. Its record stays on disk until the push goes
        through, is dropped, or has nowhere to go, so a crash loses none."""
        known = self._peers.get(item.peer)
        if known is None and item.peer in self._reconnecting:
            with contextlib.suppress(trio.WouldBlock):  # not back yet: wait longer
                self._to_retry.send_nowait(item)
            return
        if known is None or not await self._shares(known, item.tree):
            await self._require_state().drop_retry(item.id)  # the peer or tree is gone
            return
        self._queue(known, self._push_job(item.tree, item.entry_ids, item))

    def _retry_published(self, snapshot: RetrySnapshot) -> None:
        """Called by the retry actor with an immutable view of its queue."""
        self._retry_view = snapshot

    async def _retry_dropped(self, item: RetryItem) -> None:
        """Called by the retry actor: a push used up its attempts."""
        await self.inbox.send(cmd.RetryEnded(item, delivered=False))

    async def _retry_due(self, item: RetryItem) -> None:
        """Called by the retry actor: hand the item back through the inbox."""
        await self.inbox.send(cmd.RetryDue(item))

    async def _keep_running(
        self,
        name: str,
        actor: Callable[[], Awaitable[None]],
        on_down: Callable[[], None] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run an actor; restart it with backoff if it crashes, and after
        ``max_restarts`` crashes report it and leave it down instead of looping."""
        task_status.started()
        for crashes in range(self._config.max_restarts + 1):
            try:
                await actor()
                return
            except Exception:
                log.exception("actor %s crashed (%d times)", name, crashes + 1)
            await trio.sleep(min(2.0**crashes, 30.0))
        self.crashed.append(name)
        log.error("actor %s keeps crashing; left down", name)
        if on_down is not None:
            on_down()

    def _spawn(self) -> trio.Nursery:
        if self._nursery is None:
            raise SyncError("the sync engine is not running")
        return self._nursery

    def _trees_of(self, peer: str) -> set[str]:
        """The (live) set of trees related to a peer, connected or not."""
        known = self._peers.get(peer)
        if known is not None:
            return known.trees
        if peer in self._reconnecting:
            return self._reconnecting[peer][1]
        raise SyncError(f"unknown peer {peer}: connect to it first")

    def _known(self, peer: str) -> _Peer:
        known = self._peers.get(peer)
        if known is None:
            raise SyncError(f"unknown peer {peer}: connect to it first")
        return known

    def _queue(self, known: _Peer, job: Job) -> None:
        try:
            known.jobs.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            known.dropped += 1
            why = "busy; try again" if isinstance(exc, trio.WouldBlock) else "down"
            if isinstance(job, SyncJob) and job.reply is not None:
                job.reply.fail(SyncError(f"peer {known.key} is {why}"))

    def _wants(self, peer: str, tree: str) -> bool:
        """Read by the server actor: a synchronous look, never a change."""
        known = self._peers.get(peer)
        return known is not None and tree in known.trees

    def _transport(self, address: str) -> Transport:
        scheme = address.split("://", 1)[0]
        transport = self._transports.get(scheme)
        if transport is None:
            raise SyncError(f"no transport for {address!r}; known: {sorted(self._transports)}")
        return transport

    def _codec(self, address: str) -> Codec:
        return JSON if address.split("://", 1)[0] == "http" else MSGPACK

    def _service(self, codec: Codec) -> SyncService:
        return SyncService(
            self._instance,
            codec,
            on_received=lambda tree, ids, peer: self.notify(cmd.EntriesReceived(tree, ids, peer)),
            on_served=lambda tree, peer: self.notify(cmd.Served(peer, tree)),
            wanted=self._wants,
            heard=self._heard,
            on_reachable=lambda peer, address, tree: self.notify(
                cmd.PeerReachable(peer, address, tree)
            ),
            limits=self._config.limits,
            gate=self._handshake_gate,
            watching=self._watching,
        )

    async def _start_server(self, address: str) -> str:
        transport = self._transport(address)
        service = self._service(self._codec(address))
        bound: str
        scope: trio.CancelScope
        health = ServerHealth()
        bound, scope = await self._spawn().start(_serve, transport, address, service, health)
        self._services[bound] = service
        self._servers[bound] = scope
        self._server_health[bound] = health
        return bound

    async def _connect(
        self,
        address: str,
        reply: Reply[str] | None,
        expected_key: str | None = None,
        *,
        resync: bool = False,
        chosen: bool = False,
    ) -> bool:
        """Handshake with the node at ``address`` and hand the link to the supervisor
        (``reply`` hears when it has taken it up); whether the handshake succeeded. A
        connection attempt never takes the engine down: whatever goes wrong is the
        caller's error, or a logged line. ``chosen``: the operator asked for it."""
        try:
            link = Link(self._transport(address), address, self._codec(address))
            await link.handshake(self._instance, expected_key=expected_key)
        except Exception as exc:
            if self._book.is_reply(address):
                self._book.failed(address, still_open=self._is_open(address))
            error = exc if isinstance(exc, EideticaError) else SyncError(f"{address}: {exc!r}")
            if reply is not None:
                reply.fail(error)
            if not chosen:  # the operator hears of their own attempts; the log of ours
                log.warning("could not reach %s at %s: %s", expected_key, address, error)
            return False
        try:
            await self.inbox.send(_PeerUp(link, reply or Reply[str](), resync, chosen))
        except trio.ClosedResourceError:
            if reply is not None:
                reply.fail(SyncError("the sync engine stopped"))
        return True

    def _redial_now(self, address: str, key: str) -> None:
        """Dial a known peer that is down; once linked, sync its trees at once (it may
        have been down, or we were, in the middle of a sync)."""
        self._spawn().start_soon(partial(self._connect, address, None, key, resync=True))

    def _two_way_of(self, address: str) -> TwoWay | None:
        transport = self._transports.get(address.split("://", 1)[0])
        return transport if isinstance(transport, TwoWay) else None

    def _is_open(self, address: str) -> bool:
        """Whether the link at ``address`` is open (always, for one-shot transports)."""
        two_way = self._two_way_of(address)
        return two_way is None or two_way.is_open(address)

    def _keep(self, current: str, offered: str, peer: str) -> str:
        """Of two links to ``peer``, the one to keep (:func:`linkbook.keep`); between
        different transports, the newer."""
        if self._transports.get(current.split("://", 1)[0]) is not self._transports.get(
            offered.split("://", 1)[0]
        ):
            return offered
        mine = self._instance.public_key
        return linkbook.keep(current, offered, mine=mine, peer=peer, reply=self._book.reply_schemes)

    def _drop_link(self, address: str) -> None:
        """Close a two-way link we no longer use, if we dialled it. A link the peer
        dialled is left for the peer to close: it closes it once it has moved to the
        link both ends keep, so no request of its finds the link gone meanwhile."""
        two_way = self._two_way_of(address)
        if two_way is not None and not self._book.is_reply(address):
            two_way.close(address)

    def _reachable(self, peer: str, address: str, tree: str | None) -> None:
        """A proven peer sent us a request over a two-way link (asking for ``tree``,
        if given): register it (the seed's "register peer" at the handshake), learn
        the trees it syncs with us, and link back over a link it opened unless we keep
        a better link to it already. Peers the operator removed are left alone."""
        if peer in self._book.removed:
            return
        known = self._peers.get(peer)
        if known is not None and tree is not None:
            known.trees.add(tree)
            tree = None  # learned
        if not self._book.is_reply(address):
            return  # over a link we dialled: we are linked over it already
        if tree is None:  # a fresh handshake over it: a refused link-back may work now
            self._book.refused.pop(address, None)
        if (
            known is not None
            and self._usable(known)
            and (known.address == address or self._keep(known.address, address, peer) != address)
        ):
            return
        if self._book.offer(peer, address, tree):
            self._spawn().start_soon(self._connect, address, None, peer)

    def _link_closed(self, address: str, reason: str) -> None:
        """A two-way link closed: a peer linked over it is redialled with backoff if
        we know where, kept as down if the operator related it, or else forgotten (it
        only ever dialled us, and dials again when it can)."""
        self._book.closed(address)
        for known in list(self._peers.values()):
            if known.address != address or known.lost:
                continue
            known.lost = True
            if known.dial is not None:
                log.info("link to peer %s lost (%s); redialling %s", known.key, reason, known.dial)
                if known.key not in self._book.redialling:
                    self._book.redialling.add(known.key)
                    flapped = trio.current_time() - known.since < self._config.redial_max
                    first = known.redial_wait * 2 if flapped else 0.0
                    self._spawn().start_soon(self._redial, known.key, first)
                continue
            log.info("peer %s went away (%s); it will dial again", known.key, reason)
            del self._peers[known.key]
            known.jobs.close()
            if known.kept:
                self._reconnecting[known.key] = ("", known.trees)
            else:  # nothing of it is kept: its cursors go too
                for tree in known.trees:
                    self._cursors.pop((known.key, tree), None)
                    self._last_sync.pop((known.key, tree), None)

    async def _redial(self, key: str, first: float = 0.0) -> None:
        """Dial a peer whose link was lost until it answers, waiting ``redial_min``
        seconds first (or ``first``, if longer) and twice as long after each failure
        (up to ``redial_max``), each wait stretched by up to ``retry_jitter``. Stops
        once the peer is linked again (by either side), or removed. One such loop
        per peer."""
        delay = min(max(first, self._config.redial_min), self._config.redial_max)
        try:
            while True:
                await trio.sleep(delay * (1 + self._rng.uniform(0, self._config.retry_jitter)))
                lost = self._peers.get(key)
                if lost is None or not lost.lost or lost.dial is None:
                    return
                lost.redial_wait = delay  # handed on to the link this dial makes
                taken_up = Reply[str]()
                if await self._connect(lost.dial, taken_up, key, resync=True):
                    with contextlib.suppress(EideticaError):
                        await taken_up.wait()  # then look again: it may be lost already
                delay = min(delay * 2, self._config.redial_max)
        finally:
            self._book.redialling.discard(key)

    async def _peer_up(self, link: Link, *, resync: bool = False, chosen: bool = False) -> str:
        """A handshake over ``link`` succeeded: make it the peer's link, or keep the
        one it has. ``chosen``: the operator asked for this link (``connect``)."""
        key = link.peer_key
        assert key is not None, "a link is up only after its handshake"
        learned = self._book.linked(link.address)
        if key in self._book.removed:
            if not chosen:  # a background redial or link-back that outlived a removal
                self._drop_link(link.address)
                return key
            self._book.removed.discard(key)
        if chosen:
            self._require_state().set_removed(key, False)
        old = self._peers.get(key)
        if (
            old is not None
            and self._usable(old)
            and old.address != link.address
            and self._keep(old.address, link.address, key) == old.address
        ):
            self._drop_link(link.address)
            old.trees |= learned
            if not self._book.is_reply(link.address):  # remember where it listens
                old.dial = link.address
                old.kept = True
                await self._require_state().add_peer(key, link.address)
            return key
        send, receive = trio.open_memory_channel[Job](self._config.peer_inbox_size)
        down = self._reconnecting.pop(key, None)
        trees = (old.trees if old else (down[1] if down else set())) | learned
        if not self._book.is_reply(link.address):
            dial: str | None = link.address
        else:
            dial = old.dial if old else (down[0] or None if down else None)
        if dial is not None:
            await self._require_state().add_peer(key, dial)  # persist, then remember
        kept = dial is not None or (old.kept if old else down is not None)
        known = _Peer(key, link.address, link, send, receive, dial=dial, kept=kept, trees=trees)
        # The swap has no checkpoint in it: the old actor must not find its inbox
        # closed (and drop the link, which may be this one) before the new peer is in.
        if old is not None:
            if old.lost:
                known.redial_wait = old.redial_wait
            old.jobs.close()  # its actor finishes the job at hand, then drops its link
        self._peers[key] = known
        if old is not None:  # what the old link had not started yet goes on this one
            while True:
                try:
                    self._queue(known, old.queued.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        await self._spawn().start(
            self._keep_running,
            f"peer {key}",
            partial(self._run_peer, known),
            send.close,  # a peer actor left down takes no more jobs: they fail at once
        )
        if resync:  # back after its link was lost: catch up on what it missed
            await self._queue_sync(known, None)
        if not self._is_open(link.address):  # it closed while we were taking it up
            self._link_closed(link.address, "closed before it was taken up")
        return key

    def _usable(self, known: _Peer) -> bool:
        """Whether a peer's link can still carry requests."""
        return not known.lost and self._is_open(known.address)

    def _pushes(self, peer: str, tree: str) -> bool:
        """Read by the watches: whether this node pushes ``tree`` to ``peer`` itself
        (it relates the tree to the peer, over a live link), so that a watch of the
        peer's need not report it."""
        known = self._peers.get(peer)
        return known is not None and tree in known.trees and self._usable(known)

    def _heard(self, peer: str, tree: str) -> bool:
        """Read by the services: whether a peer's request for ``tree`` tells nothing
        new (the peer was removed, or syncs the tree over a live link already), so
        that a busy peer does not post a notice per request."""
        if peer in self._book.removed:
            return True
        known = self._peers.get(peer)
        return known is not None and tree in known.trees and self._usable(known)

    async def _run_peer(self, known: _Peer) -> None:
        """A peer's actor, and beside it the link's watch loop if its transport needs
        one (HTTP); once its inbox closes (the peer was removed, or moved to another
        link) and it has finished, the watch ends and its link is dropped unless still
        in use."""
        async with trio.open_nursery() as beside:
            if watched(known.link.transport):
                beside.start_soon(
                    run_watch, self._instance, known.link, lambda: known.trees, self.inbox.clone()
                )
            await run_peer(
                self._instance,
                known.link,
                known.queued,
                report=self.inbox.clone(),
                health=known.health,
                breaker=self._config.breaker,
            )
            beside.cancel_scope.cancel()
        if all(other.address != known.address for other in self._peers.values()):
            self._drop_link(known.address)

    def _status(self) -> dict[str, Any]:
        return {
            "servers": sorted(self._servers),
            "server_restarts": {
                address: {"restarts": health.restarts, "last_error": health.last_error}
                for address, health in sorted(self._server_health.items())
                if health.restarts
            },
            "refused_requests": sum(service.refused for service in self._services.values()),
            "watches": {"held": self._watching.held, "refused": self._watching.refused},
            "dropped_notices": self.dropped_notices,
            "crashed": list(self.crashed),
            "down": {
                key: {"address": address, "trees": sorted(trees)}
                for key, (address, trees) in sorted(self._reconnecting.items())
            },
            "retries": [
                {"due": due, "peer": i.peer, "tree": i.tree, "attempts": i.attempts}
                for due, i in self._retry_view.items
            ],
            "retries_dropped": self._retry_view.dropped,
            "peers": {
                key: {
                    "address": known.address,
                    "dial": known.dial,
                    "trees": sorted(known.trees),
                    "syncs": known.health.syncs,
                    "failures": known.health.failures,
                    "pushes": known.health.pushes,
                    "probes": known.health.probes,
                    "breaker": known.health.breaker,
                    "attempts": list(known.health.attempts),
                    "last_sync": known.health.last_sync,
                    "last_error": known.health.last_error,
                    "trees_last_synced": {
                        tree: self._last_sync.get((key, tree)) for tree in sorted(known.trees)
                    },
                    "queued_retries": sum(1 for _, i in self._retry_view.items if i.peer == key),
                    "dropped_jobs": known.dropped,
                }
                for key, known in sorted(self._peers.items())
            },
        }


@dataclass
class ServerHealth:
    """How one server actor has fared: written by it, read for status."""

    restarts: int = 0
    last_error: str | None = None


_SERVER_BACKOFF_MAX = 30.0
"""The longest wait before a failed server is started again, in seconds."""

_SERVER_STEADY = 60.0
"""A server that ran this long before failing is restarted after the shortest wait."""


async def _serve(
    transport: Transport,
    address: str,
    service: SyncService,
    health: ServerHealth,
    *,
    task_status: trio.TaskStatus[tuple[str, trio.CancelScope]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The server actor: serve one address until its scope is cancelled.

    A failure to listen at first comes out as the single typed error it is, not
    wrapped in a group. Once serving, the server never stops for a client (each
    connection is walled off by the transport); if it fails for a reason of its own
    (its listening socket broke), it is started again at the same bound address,
    after 1 s, doubling up to 30 s while it keeps failing, and each failure is
    logged and counted in ``health``.
    """
    listen_at: str | None = None
    wait = 1.0
    with trio.CancelScope() as scope:
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    at = listen_at or address
                    bound = await nursery.start(transport.serve, at, service.handle)
                    if listen_at is None:
                        task_status.started((bound, scope))
                    listen_at = bound
            except BaseExceptionGroup as group:
                if listen_at is None:
                    matched, rest = group.split(EideticaError)
                    if matched is None or rest is not None:
                        raise
                    raise first_leaf(matched) from group
                if group.split(Exception)[1] is not None:
                    raise  # cancellation (or worse) goes on up
                health.last_error = repr(first_leaf(group))
            else:
                health.last_error = "it stopped serving"
            if trio.current_time() - began >= _SERVER_STEADY:
                wait = 1.0
            health.restarts += 1
            log.error(
                "the server at %s failed (%s); starting it again in %.0f s",
                listen_at,
                health.last_error,
                wait,
            )
            await trio.sleep(wait)
            wait = min(wait * 2, _SERVER_BACKOFF_MAX)
