"""The Sync frontend: the public face of the engine, and ``inst.sync()``.

Every method sends a command to the supervisor and awaits its answer; nothing here
holds sync state. Leaving ``async with inst.sync()`` cancels the supervisor's
nursery, so no task of the engine outlives the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Any, TypeVar

import trio

from eidetica.actors import commands as cmd
from eidetica.actors.admin import Admin
from eidetica.actors.bus import DEFAULT_BUFFER, Subscription
from eidetica.actors.engine.policy import AcceptTrees, TreePolicy
from eidetica.actors.engine.status import SyncStatus
from eidetica.actors.reply import Reply
from eidetica.actors.supervisor import Supervisor, SyncConfig
from eidetica.actors.synced import wait_synced
from eidetica.actors.transports.admission import Admission
from eidetica.actors.transports.base import Transport
from eidetica.actors.transports.sim import SimNetwork, SimTransport
from eidetica.errors import SyncError
from eidetica.storage.guard import require_trio
from eidetica.storage.instance import Instance

T = TypeVar("T")

CLOSE_SECONDS = 5.0
"""How long closing the HTTP connection pool may take when the engine stops."""


class Sync:
    """Commands to one node's sync engine."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def _ask(self, command: cmd.Command, reply: Reply[T]) -> T:
        require_trio()
        try:
            await self._supervisor.inbox.send(command)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise SyncError("the sync engine is not running") from exc
        outcome: list[tuple[bool, Any]] = []
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                try:
                    outcome.append((True, await reply.wait()))
                except Exception as exc:  # it travels to our caller below
                    outcome.append((False, exc))
                nursery.cancel_scope.cancel()

            async def engine_stops() -> None:
                await self._supervisor.stopped.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(answer)
            nursery.start_soon(engine_stops)
        if not outcome:
            raise SyncError("the sync engine stopped before answering")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def start_server(self, address: str) -> str:
        """Listen at ``address``; return the bound address once really listening."""
        reply = Reply[str]()
        return await self._ask(cmd.StartServer(address, reply), reply)

    async def stop_server(self, address: str) -> None:
        """Stop listening at a bound address ``start_server`` returned."""
        reply = Reply[None]()
        await self._ask(cmd.StopServer(address, reply), reply)

    async def connect(self, address: str) -> str:
        """Handshake with the node at ``address``; return its proven key."""
        reply = Reply[str]()
        return await self._ask(cmd.ConnectToPeer(address, reply), reply)

    async def add_peer(self, peer: str, address: str) -> None:
        """Know ``peer`` at ``address`` from now on: the engine dials it in the
        background (and again after restarts), accepting only that key."""
        reply = Reply[None]()
        await self._ask(cmd.AddPeer(peer, address, reply), reply)

    async def shutdown(self) -> None:
        """Stop the engine now; leaving the ``async with`` block does the same."""
        require_trio()
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._supervisor.inbox.send(cmd.Shutdown())

    async def add_tree_sync(self, peer: str, tree_id: str) -> None:
        """Keep ``tree_id`` in sync with ``peer`` from now on."""
        reply = Reply[None]()
        await self._ask(cmd.CreateRelationship(peer, tree_id, reply), reply)

    async def remove_tree_sync(self, peer: str, tree_id: str) -> None:
        """Stop syncing ``tree_id`` with ``peer``."""
        reply = Reply[None]()
        await self._ask(cmd.RemoveRelationship(peer, tree_id, reply), reply)

    async def remove_peer(self, peer: str) -> None:
        """Forget ``peer`` and its relationships."""
        reply = Reply[None]()
        await self._ask(cmd.RemovePeer(peer, reply), reply)

    async def send_entries(self, peer: str, tree_id: str, entry_ids: list[str]) -> None:
        """Push these stored entries of a tree to ``peer`` now (queued on its actor; a
        failure goes to the retry queue)."""
        reply = Reply[None]()
        await self._ask(cmd.SendEntries(peer, tree_id, tuple(entry_ids), reply), reply)

    async def sync_with_peer(self, peer: str, tree: str | None = None) -> None:
        """One full two-way round of every tree shared with ``peer`` (or of ``tree``
        only), awaited."""
        reply = Reply[None]()
        await self._ask(cmd.SyncWithPeer(peer, reply, tree), reply)

    def events(self, buffer: int = DEFAULT_BUFFER) -> Subscription:
        """The node's events from now on (:mod:`eidetica.events`), for ``async for``;
        the iteration ends when the engine stops. Use ``async with sync.events() as
        events:`` to stop listening on leaving the block. A consumer that falls more
        than ``buffer`` events behind reads one ``Missed`` in place of those it lost."""
        return self._supervisor.bus.subscribe(buffer)

    async def wait_synced(self, peer: str, tree_id: str, *, retry: float = 5.0) -> None:
        """Return once this node and ``peer`` hold the same tips of ``tree_id``,
        syncing that tree with the peer as needed (see :mod:`eidetica.actors.synced`).
        It waits for a peer that is not linked; bound it with ``trio.fail_after``."""
        require_trio()
        supervisor = self._supervisor
        await wait_synced(
            supervisor.instance, supervisor.bus, self.sync_with_peer, peer, tree_id, retry=retry
        )

    async def status(self) -> SyncStatus:
        """A typed snapshot: servers, and each peer with its state, link, trees, counts,
        failures and breaker; the retry queue; actors left down."""
        reply = Reply[SyncStatus]()
        return await self._ask(cmd.Status(reply), reply)

    @property
    def admin(self) -> Admin:
        """The node's read-only pages: ``admin.health()``, ``admin.ready()``,
        ``admin.metrics``, ``admin.snapshot()`` (:mod:`eidetica.actors.admin`)."""
        return self._supervisor.admin

    async def peers(self) -> list[str]:
        """The proven keys of the peers this node knows."""
        return sorted((await self.status()).peers)


@asynccontextmanager
async def open_sync(
    instance: Instance,
    *,
    network: SimNetwork | None = None,
    name: str | None = None,
    config: SyncConfig | None = None,
    transports: dict[str, Transport] | None = None,
    accept_trees: AcceptTrees | None = None,
) -> AsyncIterator[Sync]:
    """Run the sync engine of ``instance`` for the duration of the block.

    ``sim://`` addresses use ``network`` (or the default in-process one); ``name`` is
    this node's name on it, so a test's partitions apply to it both ways. ``http://``
    uses an :class:`HttpTransport` whose connection pool closes with the block, and
    ``ws://`` a :class:`WebSocketTransport` and ``sim://`` a :class:`SimTransport`,
    whose links (one per peer) are opened before the engine starts and closed after
    it stops. ``transports`` adds or
    replaces transports by scheme (their owner closes them).

    ``accept_trees`` (over ``config.accept_trees``) says which trees the node takes in
    from peers it was not told to sync them with: ``"chosen"`` (none: the default),
    ``"any"`` (a hub's), a collection of peer keys, or a callable ``(peer_key,
    tree_id) -> bool`` or awaitable of bool. A tree taken in is synced with the peer
    that brought it from then on, and with every other peer of the tree.
    """
    require_trio()
    # The HTTP and WebSocket stacks are imported here, not with this module: a
    # command that only opens a data directory or asks a running node never needs
    # them, and importing them takes most of a command's time.
    from eidetica.actors.transports.http import HttpTransport  # noqa: PLC0415
    from eidetica.actors.transports.ws import WebSocketTransport  # noqa: PLC0415

    config = config or SyncConfig()
    if accept_trees is not None:
        config = replace(config, accept_trees=accept_trees)
    TreePolicy.of(config.accept_trees)  # a wrong policy fails here, in the caller
    admission = Admission(config.limits)  # one set of bounds for all the node's servers
    instance.intake.set_quota(config.limits.max_held_per_peer)
    http = HttpTransport(health=instance.healthy, admission=admission)
    async with (
        WebSocketTransport(admission=admission) as websocket,
        SimTransport(network, name=name) as sim,
    ):
        chosen: dict[str, Transport] = {
            "sim": sim,
            "http": http,
            "ws": websocket,
            **(transports or {}),
        }
        supervisor = Supervisor(instance, chosen, config)
        for transport in chosen.values():  # their listeners serve this node's pages
            if (
                isinstance(transport, HttpTransport | WebSocketTransport)
                and transport.admin is None
            ):
                transport.admin = supervisor.admin
        instance.add_commit_hook(supervisor.on_commit)
        instance.add_receive_hook(supervisor.on_receive)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                yield Sync(supervisor)
                with trio.move_on_after(config.shutdown_grace):
                    await supervisor.drain()  # the jobs at hand finish, within the grace
                nursery.cancel_scope.cancel()
        finally:
            instance.remove_commit_hook(supervisor.on_commit)
            instance.remove_receive_hook(supervisor.on_receive)
            supervisor.inbox.close()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                await http.aclose()  # even when cancelled: no connection outlives the block
