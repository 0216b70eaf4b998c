"""The service's notices about peers that can be reached back over their link."""

from __future__ import annotations

import time

import trio
import trio.testing

import eidetica
from eidetica.actors.engine.view import EngineView
from eidetica.actors.link import Link
from eidetica.actors.service import SyncService
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.base import Handler, Origin
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.handshake import Initiator, Proven
from eidetica.protocol.keyexchange import EphemeralKey
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.mac import request_mac
from eidetica.protocol.messages import (
    ErrorReply,
    HandshakeDone,
    HandshakeInit,
    HandshakeReply,
    Summary,
    SyncRequest,
    SyncResponse,
)

EPHEMERAL = EphemeralKey.from_random(bytes([5] * 32)).public


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
    seen: list[tuple[str, str | None, str | None]] = []
    heard: set[tuple[str, str]] = set()  # what the engine knows (its published view)

    def reachable(peer: str, address: str | None, tree: str | None) -> None:
        seen.append((peer, address, tree))
        if tree is not None:
            heard.add((peer, tree))

    def view() -> EngineView:
        peers = frozenset(peer for peer, _ in heard)
        return EngineView(relations=frozenset(heard), linked=peers, known=peers)

    async with eidetica.open_instance(None) as node, eidetica.open_instance(None) as peer:
        tree = await node.create_tree(name="t")
        await tree.grant(peer.public_key, "read")
        service = SyncService(
            node,
            MSGPACK,
            on_reachable=reachable,
            view=view,
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


def init_from(key: SigningKey, request_id: int) -> bytes:
    challenge = request_id.to_bytes(32, "big")
    init = HandshakeInit(
        public_key=key.public_key, challenge=challenge, ephemeral=EPHEMERAL, time=int(time.time())
    )
    return MSGPACK.encode(init, request_id)


async def test_handshakes_past_the_rate_of_a_source_are_refused_busy_and_others_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stranger = SigningKey.generate()
    async with eidetica.open_instance(None) as node:
        service = SyncService(node, MSGPACK, limits=ServerLimits(handshake_rate=10))
        flood = Origin(source="203.0.113.9", link="ws-in://1")
        answers = [
            MSGPACK.decode(await service.handle(init_from(stranger, n), flood)).body
            for n in range(1, 31)
        ]
        busy = [a for a in answers if isinstance(a, ErrorReply)]
        assert len(busy) == 10 and all(a.message.startswith("busy:") for a in busy)
        honest = Origin(source="198.51.100.7", link="ws-in://2")
        answer = MSGPACK.decode(await service.handle(init_from(stranger, 99), honest)).body
        assert isinstance(answer, HandshakeReply)
        await trio.sleep(1)  # the bucket refills at the rate: ten more
        later = [
            MSGPACK.decode(await service.handle(init_from(stranger, n), flood)).body
            for n in range(100, 111)
        ]
        assert [isinstance(a, HandshakeReply) for a in later] == [True] * 10 + [False]


async def handshake(service: SyncService, key: SigningKey, origin: Origin) -> Proven:
    """A whole handshake of ``key`` with ``service``, as from ``origin``."""
    initiator = Initiator(key, now=time.time())
    reply = MSGPACK.decode(await service.handle(MSGPACK.encode(initiator.start()), origin))
    assert isinstance(reply.body, HandshakeReply), reply.body
    finish = initiator.receive_reply(reply.body)
    done = MSGPACK.decode(await service.handle(MSGPACK.encode(finish), origin))
    assert isinstance(done.body, HandshakeDone), done.body
    return initiator.receive_done(done.body)


async def test_a_flood_of_throwaway_sessions_leaves_a_live_session_working(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with eidetica.open_instance(None) as node:
        tree = await node.create_tree(name="t")
        await tree.grant("*", "read")
        service = SyncService(node, MSGPACK, limits=ServerLimits(handshake_rate=1e6))
        honest = await handshake(service, SigningKey.generate(), Origin("198.51.100.7", "a"))
        for n in range(4200):  # from 100 addresses: the table fills, then each replaces its own
            stranger = Origin(source=f"203.0.113.{n % 100}", link=f"ws-in://{n}")
            await handshake(service, SigningKey.generate(), stranger)
        summary = Summary(min_height=0, hashes=1, salt=b"", bits=b"")
        body = SyncRequest(tree=tree.root_id, tips=(), summary=summary)
        mac = request_mac(honest.session_key, honest.session, body)
        request = MSGPACK.encode(body, 1, honest.session, mac)
        answer = await service.handle(request, Origin("198.51.100.7", "a"))
        assert isinstance(MSGPACK.decode(answer).body, SyncResponse)
