"""A node's services and the servers that listen for them.

One :class:`SyncService` per listening address (and one for the links this node
dialled), sharing one handshake rate, one admission policy and one set of watch
caps. The services post what is news to the supervisor (``notify``) and read the
engine's published view (``view``); they never call into the supervisor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

import eidetica.events as news
from eidetica.actors import commands as cmd
from eidetica.actors.config import SyncConfig
from eidetica.actors.dialer import codec_for
from eidetica.actors.engine.policy import TreePolicy
from eidetica.actors.engine.status import ServerStatus, WatchStatus
from eidetica.actors.engine.view import EngineView
from eidetica.actors.server import ServerHealth, serve
from eidetica.actors.service import HandshakeGate, SyncService
from eidetica.actors.transports.routes import Routes
from eidetica.actors.watching import Watching
from eidetica.errors import SyncError
from eidetica.protocol.codec import MSGPACK, Codec
from eidetica.storage.instance import Instance


@dataclass
class _Server:
    scope: trio.CancelScope
    service: SyncService
    health: ServerHealth


class Servers:
    """The node's listening servers and what they share."""

    def __init__(
        self,
        instance: Instance,
        config: SyncConfig,
        routes: Routes,
        notify: Callable[[cmd.Command], None],
        view: Callable[[], EngineView],
        *,
        announce: Callable[[news.Event], None] | None = None,
    ) -> None:
        self._instance = instance
        self._config = config
        self._routes = routes
        self._notify = notify
        self._view = view
        self._announce = announce
        self._gate = HandshakeGate(config.limits.handshake_rate)
        self.policy = TreePolicy.of(config.accept_trees, config.tree_quota)
        """One admission policy, and one count of what each peer brought, for all."""
        self._watching = Watching(instance, config.limits, pushes=self._pushes)
        self.back = self._service(MSGPACK)
        """Answers requests on the links this node dialled."""
        self._servers: dict[str, _Server] = {}

    def _service(self, codec: Codec) -> SyncService:
        notify = self._notify
        return SyncService(
            self._instance,
            codec,
            on_received=lambda tree, ids, peer: notify(cmd.EntriesReceived(tree, ids, peer)),
            on_served=lambda tree, peer: notify(cmd.Served(peer, tree)),
            view=self._view,
            on_reachable=lambda peer, at, tree: notify(cmd.PeerReachable(peer, at, tree)),
            limits=self._config.limits,
            gate=self._gate,
            policy=self.policy,
            on_taken=lambda peer, tree: notify(cmd.TreeTaken(peer, tree)),
            watching=self._watching,
            on_sent=self._sent,
        )

    def _sent(self, peer: str, tree: str, count: int, size: int) -> None:
        """A service's answer carried entries to a peer: news for the node's users."""
        if self._announce is not None:
            self._announce(news.EntriesSent(peer, tree, count, size))

    def _pushes(self, peer: str, tree: str) -> bool:
        """Read by the watches: whether this node pushes ``tree`` to ``peer`` over a
        live link itself, so that the peer's watch need not report it."""
        view = self._view()
        return view.relates(peer, tree) and peer in view.linked

    async def start(self, nursery: trio.Nursery, address: str) -> str:
        """Listen at ``address``; the bound address, once really listening."""
        service = self._service(codec_for(address))
        health = ServerHealth()
        bound: str
        scope: trio.CancelScope
        transport = self._routes.transport(address)
        bound, scope = await nursery.start(serve, transport, address, service, health)
        self._servers[bound] = _Server(scope, service, health)
        return bound

    async def stop(self, address: str) -> None:
        server = self._servers.pop(address, None)
        if server is None:
            raise SyncError(f"no server at {address}")
        server.scope.cancel()

    def statuses(self) -> list[ServerStatus]:
        return [
            ServerStatus(at, s.health.restarts, s.health.last_error, s.health.listening)
            for at, s in sorted(self._servers.items())
        ]

    @property
    def refused(self) -> int:
        """Requests answered with an error, by every service."""
        return self.back.refused + sum(s.service.refused for s in self._servers.values())

    def refusals(self) -> Counter[str]:
        """Refused requests by error code, and watches refused as busy."""
        counts = Counter(self.back.refused_by)
        for server in self._servers.values():
            counts.update(server.service.refused_by)
        if self._watching.refused:
            counts["watch-busy"] += self._watching.refused
        return counts

    @property
    def watches(self) -> WatchStatus:
        return WatchStatus(self._watching.held, self._watching.refused)
