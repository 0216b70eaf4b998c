"""A server's service and a watcher's link to it, with no network between: for the
tests of watches (the server's hold and the watcher's loop) on a mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.service import SyncService
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.base import Handler, Origin
from eidetica.actors.watching import Pushes, Watching
from eidetica.protocol.codec import JSON


class OneWay:
    """A transport that hands each request straight to a handler, as HTTP carries it:
    with no reply address, so nothing comes back but the answer. ``handler`` may be
    swapped, and ``stopping`` set, by a test."""

    scheme = "test"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.stopping: trio.Event | None = None
        self.requests = 0

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        raise NotImplementedError("requests go straight to the handler")

    async def request(self, address: str, data: bytes) -> bytes:
        self.requests += 1
        origin = Origin(source="127.0.0.1", link="test://1", stopping=self.stopping)
        return await self.handler(data, origin)


@dataclass
class Scene:
    """A node serving two trees, and a watcher linked to it under one session. The
    watcher may write ``tree``; ``secret`` it may not read."""

    node: eidetica.Instance
    watcher: eidetica.Instance
    tree: eidetica.Tree
    secret: eidetica.Tree
    watching: Watching
    service: SyncService
    transport: OneWay
    link: Link

    async def another_link(self) -> Link:
        """A second link of the watcher's, under a session of its own."""
        link = Link(self.transport, "test://node", JSON)
        await link.handshake(self.watcher)
        return link

    async def commit(self, tree: eidetica.Tree, value: int) -> str:
        """Write ``value`` to ``tree`` (the node's or the watcher's copy); its new tip."""
        async with tree.transaction() as op:
            op.doc("d").set("n", value)
        (tip,) = await tree.tips()
        return tip


@asynccontextmanager
async def scene(
    limits: ServerLimits | None = None, pushes: Pushes | None = None
) -> AsyncIterator[Scene]:
    limits = limits or ServerLimits()
    async with eidetica.open_instance(None) as node, eidetica.open_instance(None) as watcher:
        tree = await node.create_tree(name="shared")
        await tree.grant(watcher.public_key, "write")
        secret = await node.create_tree(name="secret")
        watching = Watching(node, limits, pushes=pushes)
        service = SyncService(node, JSON, limits=limits, watching=watching)
        transport = OneWay(service.handle)
        link = Link(transport, "test://node", JSON)
        await link.handshake(watcher)
        transport.requests = 0  # count from here
        yield Scene(node, watcher, tree, secret, watching, service, transport, link)
