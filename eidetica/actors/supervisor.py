"""The supervisor: the seed's BackgroundSync, the single owner of all sync state.

It is a thin shell around the pure engine (``engine/``): it feeds each message from
its inbox to ``Engine.handle`` and carries out the effects that come back (dial,
start or stop a peer actor, hand a link or a job on, persist, answer, publish the
view the services read). Its nursery holds one actor per peer (``peers.py``), a
timer, a retry actor and one server actor per listening address. Network work
happens in those actors, never in this loop, so a slow peer never delays a command.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import eidetica.events as news
from eidetica.actors import commands as cmd
from eidetica.actors.admin import Admin
from eidetica.actors.bus import Bus
from eidetica.actors.config import SyncConfig
from eidetica.actors.engine import effects as fx
from eidetica.actors.engine.core import Engine, EngineConfig
from eidetica.actors.engine.retries import (
    Deferred,
    ForgetPeer,
    RetryItem,
    RetryMessage,
    RetryQueue,
    RetrySnapshot,
)
from eidetica.actors.engine.status import (
    ActorViews,
    SyncStatus,
    TreeStatus,
    peer_statuses,
    retry_statuses,
)
from eidetica.actors.engine.view import EngineView
from eidetica.actors.inflight import InFlight
from eidetica.actors.keeper import keep_running
from eidetica.actors.link import Link
from eidetica.actors.peers import PeerActors
from eidetica.actors.reply import Reply
from eidetica.actors.retry import run_retry
from eidetica.actors.servers import Servers
from eidetica.actors.state import SyncState
from eidetica.actors.timer import run_timer
from eidetica.actors.transports.base import Transport
from eidetica.actors.transports.routes import Routes
from eidetica.actors.treestatus import TreeStatuses
from eidetica.errors import EideticaError, SyncError
from eidetica.protocol.entry import Entry
from eidetica.storage.instance import Instance
from eidetica.storage.tree import Tree

__all__ = ["Supervisor", "SyncConfig"]

log = logging.getLogger(__name__)

DEFER_BUSY = 1.0
"""Seconds before a due push that found its peer's inbox full is due again."""


class Supervisor:
    """Runs the engine; see the module docstring."""

    def __init__(
        self, instance: Instance, transports: dict[str, Transport], config: SyncConfig
    ) -> None:
        self.instance = instance
        """The node this engine syncs (read by the frontend)."""
        self._routes = Routes(transports)
        self._config = config
        self.inbox, self._commands = trio.open_memory_channel[cmd.Command](config.inbox_size)
        self._engine = Engine(
            instance.public_key,
            families=self._routes.families,
            reply_schemes=self._routes.reply_schemes,
            config=EngineConfig(config.redial_min, config.redial_max, config.retry_jitter),
            rng=instance.randomness.random(),
        )
        self._view = EngineView()
        """What the services read: the engine's view as last published."""
        self.bus = Bus()
        """The node's events, for its users (``sync.events()``) and its metrics."""
        self._fresh: dict[str, Link] = {}
        """Links that came up and are not handed on yet (this loop's alone)."""
        self._servers = Servers(
            instance, config, self._routes, self.notify, self._published, announce=self.bus.publish
        )
        self._peers = PeerActors(
            instance,
            config,
            self._routes,
            self.inbox,
            self._keep,
            self._servers.policy,
            self._defer,
            self._trees_of,
            announce=self.bus.publish,
        )
        self._retries = RetryQueue(
            max_attempts=config.max_retries,
            jitter=config.retry_jitter,
            rng=instance.randomness.random(),
        )
        """Filled with persisted retries at start, then the retry actor's alone."""
        self._retry_view = RetrySnapshot()
        self._to_retry, self._retry_inbox = trio.open_memory_channel[RetryMessage](
            config.inbox_size
        )
        self._state: SyncState | None = None
        self.stopped = trio.Event()
        """Set once the engine has stopped: callers stop waiting for answers."""
        self.crashed: list[str] = []
        self.restarts: Counter[str] = Counter()
        """Restarts of crashed actors, by name."""
        self.dropped_notices = 0
        self._running = False
        self._trees = TreeStatuses(instance.backend, instance.sync_tips)
        self.admin = Admin(
            instance.public_key,
            self.status,
            self.engine_state,
            instance.healthy,
            instance.intake,
            changes=lambda: (self.bus.published, instance.version),
            wall_clock=instance.wall_clock,
        )
        """The node's read-only pages (health, readiness, metrics, status page)."""
        self.bus.listen(self.admin.on_event)
        self._in_flight = InFlight()
        self.bus.listen(self._in_flight.on_event)
        self._nursery: trio.Nursery | None = None
        self._draining = False
        """Stopping: commands fail at once, and no job is started."""

    async def drain(self) -> None:
        """Stop taking work and let the jobs at hand finish: the first half of a
        shutdown, which the caller bounds with a deadline before cancelling."""
        self._draining = True
        self._peers.stop_all()
        await self._peers.finished()

    def notify(self, command: cmd.Command) -> None:
        """Fire-and-forget: a full inbox drops the notice (counted, logged), never blocks.
        The next periodic sync finds whatever a dropped notice was about. A tree taken
        in is no such notice (nothing would relate it later): it waits for room."""
        try:
            self.inbox.send_nowait(command)
        except trio.WouldBlock:
            if isinstance(command, cmd.TreeTaken) and self._nursery is not None:
                self._nursery.start_soon(self._post_later, command)
                return
            self.dropped_notices += 1
            log.warning("sync inbox full: dropped %s", type(command).__name__)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the engine has stopped

    async def _post_later(self, command: cmd.Command) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self.inbox.send(command)

    def on_receive(self, tree: str, source: str | None, count: int, size: int) -> None:
        """The receive hook: tell the node's users what a peer's entries added."""
        if source is not None:
            self.bus.publish(news.EntriesReceived(source, tree, count, size))

    def on_commit(self, tree: Tree, entry: Entry) -> None:
        """The commit hook: post the new entry for pushing."""
        self.notify(cmd.QueueEntry(tree.root_id, entry))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled, resuming the peers, relationships and retries that the
        sync state kept from the last run."""
        self._state = state = await SyncState.open(self.instance)
        for two_way in self._routes.two_way:
            two_way.attach(
                self._servers.back.handle, lambda at, why: self.notify(cmd.LinkClosed(at, why))
            )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                kept, cursors = await state.kept()
                restored = self._engine.restore(kept, cursors, state.removed(), state.tree.root_id)
                await self._carry_out(restored)
                for item in await state.retry_items():
                    self._retries.restore(item, trio.current_time())
                await self._start_timers(nursery)
                self._running = True
                task_status.started()
                await self._loop()
        finally:
            self._flush_state()
            self.bus.close()
            for two_way in self._routes.two_way:
                two_way.detach()

    def _flush_state(self) -> None:
        """Write the counts and cursors kept back for a moment (SyncState.flush)."""
        if self._state is None:
            return
        try:
            self._state.flush()
        except EideticaError as exc:
            log.error("could not record the last sync counts and cursors: %s", exc)

    async def _start_timers(self, nursery: trio.Nursery) -> None:
        schedules = [
            (self._config.periodic_sync, cmd.SyncAll),
            (self._config.connection_check, cmd.CheckConnections),
        ]
        await nursery.start(run_timer, self.inbox.clone(), schedules)
        retry = partial(
            run_retry,
            self._retries,
            self._retry_inbox,
            partial(self._post, cmd.RetryDue),
            dropped=partial(self._post, lambda item: cmd.RetryEnded(item, delivered=False)),
            publish=self._retries_published,
            sweep=self._config.retry_sweep,
        )
        nursery.start_soon(self._keep, "retry", retry)

    def _retries_published(self, snapshot: RetrySnapshot) -> None:
        self._retry_view = snapshot  # replaced whole by the retry actor: for status

    async def _post(self, make: Callable[[RetryItem], cmd.Command], item: RetryItem) -> None:
        await self.inbox.send(make(item))

    async def _loop(self) -> None:
        try:
            while (command := await self._next_command()) is not None:
                await self._take(command)
        finally:
            self._stop_taking_commands()
            self.stopped.set()

    async def _next_command(self) -> cmd.Command | None:
        """The next command, or None once the inbox is closed. While the sync state
        holds writes back (counts, cursors), waiting for one is cut short to write
        them at their deadline, so an idle node keeps nothing back for long."""
        state = self._state
        while True:
            deadline = state.flush_deadline() if state is not None else math.inf
            with trio.move_on_at(deadline):
                try:
                    return await self._commands.receive()
                except trio.EndOfChannel:
                    return None
            self._flush_state()

    def _stop_taking_commands(self) -> None:
        """Close the inbox and fail the replies of commands still in it, so no caller
        waits for an engine that has stopped."""
        self._peers.stop_all()
        while True:
            try:
                pending = self._commands.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            reply = getattr(pending, "reply", None)
            if reply is not None:
                reply.fail(SyncError("the sync engine stopped"))
        self._commands.close()

    async def _take(self, command: cmd.Command) -> None:
        reply = getattr(command, "reply", None)
        if self._draining and reply is not None:  # reports still land: records are kept
            reply.fail(SyncError("the sync engine is stopping"))
            return
        match command:
            case cmd.StartServer():
                await self._answer(
                    command.reply, self._servers.start(self._spawn(), command.address)
                )
            case cmd.StopServer():
                await self._answer(command.reply, self._servers.stop(command.address))
            case cmd.Status():
                command.reply.set(self.status())
            case cmd.Shutdown():
                self._spawn().cancel_scope.cancel()
            case _:
                await self._feed(command)

    async def _answer(self, reply: Reply[Any], work: Awaitable[Any]) -> None:
        try:
            reply.set(await work)
        except EideticaError as exc:
            reply.fail(exc)

    async def _feed(self, event: cmd.Event) -> None:
        """One event through the engine, and its effects carried out."""
        if isinstance(event, cmd.LinkUp) and isinstance(event.link, Link):
            self._fresh[event.address] = event.link
        try:
            effects = self._engine.handle(event, trio.current_time())
        except EideticaError as exc:
            log.warning("%s failed: %s", type(event).__name__, exc)
            return
        await self._carry_out(effects)
        if isinstance(event, cmd.LinkUp) and not self._routes.is_open(event.address):
            await self._feed(cmd.LinkClosed(event.address, "closed before it was taken up"))

    async def _carry_out(self, effects: list[fx.Effect]) -> None:
        """Do what the engine decided, in order. A write that fails fails the answers
        after it: nobody hears "done" for a change that is not on disk."""
        failed: EideticaError | None = None
        for effect in effects:
            match effect:
                case fx.Answer(reply, value) if failed is not None:
                    reply.fail(failed)
                case fx.Answer(reply, value):
                    reply.set(value)
                case fx.Fail(reply, error):
                    reply.fail(error)
                case fx.Persist():
                    try:
                        await self._persist(effect)
                    except EideticaError as exc:
                        log.error("could not record %s: %s", effect.op, exc)
                        failed = exc
                case fx.Publish():
                    self._view = self._engine.view()
                case fx.Announce(event):
                    self.bus.publish(event)
                case _:
                    try:
                        await self._act(effect)
                    except Exception:  # a bug in one effect must not stop the node
                        log.exception("carrying out %s failed", type(effect).__name__)

    async def _act(self, effect: fx.Effect) -> None:
        """Effects on actors and links."""
        match effect:
            case fx.Dial():
                self._peers.dial(self._spawn(), effect)
            case fx.StopDial(peer):
                self._peers.stop_dial(peer)
            case fx.StartPeer(peer):
                await self._peers.start(self._spawn(), peer)
            case fx.StopPeer(peer, close_link):
                self._peers.stop(peer, close_link)
            case fx.UseLink(peer, address, close_previous):
                self._peers.use_link(peer, self._fresh.pop(address), close_previous)
            case fx.DropLink(address, close):
                self._fresh.pop(address, None)
                if close:
                    self._routes.close(address)
            case fx.Queue(peer, job):
                self._peers.queue(peer, job)
            case fx.ToRetry(item):
                self._retry(item)
            case fx.ForgetRetries(peer):
                self._retry(ForgetPeer(peer))

    async def _persist(self, effect: fx.Persist) -> None:
        state = self._state
        assert state is not None, "effects come only once the engine runs"
        result = getattr(state, effect.op)(*effect.args, **dict(effect.keywords))
        if result is not None:
            await result

    def _defer(self, item: RetryItem) -> None:
        self._retry(Deferred(item, trio.current_time() + DEFER_BUSY))

    def _retry(self, message: RetryMessage) -> None:
        try:
            self._to_retry.send_nowait(message)
        except trio.WouldBlock:
            log.warning("retry queue full: the periodic sync will repair %s", message)

    async def _keep(self, name: str, actor: Callable[[], Awaitable[None]]) -> None:
        await keep_running(
            name,
            actor,
            max_restarts=self._config.max_restarts,
            crashed=self.crashed.append,
            restarted=self._restarted,
        )

    def _restarted(self, name: str) -> None:
        self.restarts[name.split(" ", 1)[0]] += 1  # by kind: peer actors are many

    def _published(self) -> EngineView:
        """Read by the services: the engine's view as last published."""
        return self._view

    def _trees_of(self, peer: str) -> frozenset[str]:
        """Read by a peer actor's watch: the trees synced with ``peer`` now."""
        return self._view.trees(peer)

    def _spawn(self) -> trio.Nursery:
        if self._nursery is None:
            raise SyncError("the sync engine is not running")
        return self._nursery

    def engine_state(self) -> str:
        """``starting``, ``running``, ``stopping`` (draining) or ``stopped``."""
        if self.stopped.is_set():
            return "stopped"
        if self._draining:
            return "stopping"
        return "running" if self._running else "starting"

    def _tree_statuses(self, peers_by_tree: dict[str, set[str]]) -> dict[str, TreeStatus]:
        """The synced trees' statuses; none if storage fails (status must not: it is
        what tells of the failure)."""
        engine, intake = self._engine, self.instance.intake
        held = {tree: intake.held(tree) for tree in peers_by_tree}
        try:
            return self._trees.of(peers_by_tree, engine.cursors, engine.last_sync, held)
        except Exception as exc:
            log.warning("status without its trees: storage failed (%r)", exc)
            return {}

    def status(self) -> SyncStatus:
        """A typed snapshot of the engine, its servers, its actors and its trees."""
        engine = self._engine
        views = ActorViews(dict(self._peers.health), self._peers.dropped(), self._retry_view)
        peers_by_tree: dict[str, set[str]] = {}
        for record in engine.peers.values():
            for tree in record.trees:
                peers_by_tree.setdefault(tree, set()).add(record.key)
        refusals = self._servers.refusals()
        refused_connections = sum(admission.refused for admission in self._routes.admissions())
        if refused_connections:
            refusals["connection"] += refused_connections
        restarts = dict(self.restarts)
        for server in self._servers.statuses():
            if server.restarts:
                restarts[f"server {server.address}"] = server.restarts
        return SyncStatus(
            servers=self._servers.statuses(),
            peers=peer_statuses(engine, trio.current_time(), views),
            retries=retry_statuses(self._retry_view),
            retries_dropped=self._retry_view.dropped,
            refused_requests=self._servers.refused,
            dropped_notices=self.dropped_notices,
            crashed=list(self.crashed),
            watches=self._servers.watches,
            trees=self._tree_statuses(peers_by_tree),
            refusals=dict(refusals),
            restarts=restarts,
            syncing=self._in_flight.statuses(),
        )
