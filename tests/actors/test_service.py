"""The service's notices about peers that can be reached back over their link."""

from __future__ import annotations

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.service import SyncService
from eidetica.actors.transports.base import Handler, Origin
from eidetica.protocol.codec import MSGPACK


class BackLink:
    """A transport that hands requests straight to a handler, as a two-way link
    would: with the link's reply address in the request's origin."""

    scheme = "ws"

    def __init__(self, handler: Handler, address: str) -> None:
        self._handler = handler
        self._address = address

    async def request(self, address: str, data: bytes) -> bytes:
        origin = Origin(source="127.0.0.1", link=self._address, reply=self._address)
        return await self._handler(data, origin)


async def test_a_peer_is_reported_at_each_handshake_and_at_trees_not_heard_of() -> None:
    seen: list[tuple[str, str, str | None]] = []
    heard: set[tuple[str, str]] = set()  # what the listener knows (the supervisor's look)

    def reachable(peer: str, address: str, tree: str | None) -> None:
        seen.append((peer, address, tree))
        if tree is not None:
            heard.add((peer, tree))

    async with eidetica.open_instance(None) as node, eidetica.open_instance(None) as peer:
        tree = await node.create_tree(name="t")
        await tree.grant(peer.public_key, "read")
        service = SyncService(
            node,
            MSGPACK,
            on_reachable=reachable,
            heard=lambda key, tree_id: (key, tree_id) in heard,
        )
        for address in ("ws-in://1", "ws-in://2"):
            link = Link(BackLink(service.handle, address), "ws://node", MSGPACK)  # type: ignore[arg-type]
            await link.handshake(peer)
            for _ in range(3):
                await link.sync_tree(peer, tree.root_id)
            heard.clear()  # as if the listener forgot the peer when the link closed
    key = peer.public_key
    assert seen == [
        (key, "ws-in://1", None),
        (key, "ws-in://1", tree.root_id),
        (key, "ws-in://2", None),
        (key, "ws-in://2", tree.root_id),
    ]
