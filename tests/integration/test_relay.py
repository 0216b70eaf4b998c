"""Issue 10: relaying an honest handshake gives the relay no session it can use.

Three nodes over each transport, HTTP and WebSocket, with real servers on 127.0.0.1.
C serves a tree that only B may read. B dials X, an address it pinned no key for. X
hands every request B sends to C, byte for byte, and every answer back (over
WebSocket under B's own request id, as any relay between two links must), and keeps
a copy of all of it. So the handshake proves B's key to C and C's to B, through X,
and B reads the tree through X. X knows the session id, having carried C's Done, and
every request and answer, but not the session key: whatever it sends of its own under
the session, C answers exactly as it answers a session it never heard of, and any
answer it changes fails B's request on that link alone.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import pytest
import trio

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.service import UNKNOWN_SESSION, SyncService
from eidetica.actors.transports.base import Origin
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.errors import BadMac, RemoteError
from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.protocol.mac import answer_mac
from eidetica.protocol.messages import (
    Ack,
    Envelope,
    ErrorReply,
    HandshakeDone,
    Message,
    SendEntries,
    Summary,
    SyncRequest,
    SyncResponse,
)


@dataclass(frozen=True)
class Wire:
    """One transport and its codec."""

    scheme: str
    codec: Codec

    def transport(self) -> HttpTransport | WebSocketTransport:
        return HttpTransport() if self.scheme == "http" else WebSocketTransport()

    @property
    def any_port(self) -> str:
        return f"{self.scheme}://127.0.0.1:0"


WIRES = [Wire("http", JSON), Wire("ws", MSGPACK)]

Alter = Callable[["Relay", Envelope], Envelope]
"""What X does to an answer on its way back to B."""


def untouched(relay: Relay, answer: Envelope) -> Envelope:
    return answer


@dataclass
class Relay:
    """X: hands every request to C and every answer back, keeping a copy of each."""

    client: HttpTransport | WebSocketTransport
    target: str
    codec: Codec
    alter: Alter = untouched
    exchanges: list[tuple[Envelope, Envelope]] = field(default_factory=list)

    async def handle(self, data: bytes, origin: Origin) -> bytes:
        answer = await self.client.request(self.target, data)
        request, reply = self.codec.decode(data), self.codec.decode(answer)
        self.exchanges.append((request, reply))
        forwarded = self.alter(self, reply)
        if forwarded is reply and reply.id == request.id:
            return answer  # as C sent it
        return self.codec.encode(forwarded.body, request.id, forwarded.session, forwarded.mac)

    @property
    def session(self) -> bytes:
        """The session id C's Done named, as X saw it go by."""
        (done,) = [
            reply.body for _, reply in self.exchanges if isinstance(reply.body, HandshakeDone)
        ]
        assert isinstance(done, HandshakeDone)
        return done.session

    def requests(self, kind: type[Message]) -> list[Envelope]:
        """B's requests of ``kind`` that X carried."""
        return [request for request, _ in self.exchanges if isinstance(request.body, kind)]


@dataclass
class Scene:
    """The three nodes: B (an instance and its client), X (the relay, its address and a
    client of its own) and C (an instance serving ``tree`` at ``c_at``)."""

    wire: Wire
    b: eidetica.Instance
    b_client: HttpTransport | WebSocketTransport
    x: eidetica.Instance
    x_client: HttpTransport | WebSocketTransport
    relay: Relay
    x_at: str
    c: eidetica.Instance
    c_at: str
    tree: str

    def link_through_x(self) -> Link:
        return Link(self.b_client, self.x_at, self.wire.codec)

    async def x_sends(self, body: Message, session: bytes | None, mac: bytes = b"") -> Envelope:
        """A request of X's own, straight to C."""
        data = self.wire.codec.encode(body, session=session, mac=mac)
        return self.wire.codec.decode(await self.x_client.request(self.c_at, data))

    async def unknown_session_answer(self) -> Envelope:
        """What C answers a request under a session it never made."""
        return await self.x_sends(self.sync_request(), os.urandom(32), os.urandom(32))

    def sync_request(self) -> SyncRequest:
        summary = Summary(min_height=0, hashes=1, salt=b"", bits=b"\x00")
        return SyncRequest(tree=self.tree, tips=(), summary=summary)


@asynccontextmanager
async def relayed(wire: Wire, alter: Alter = untouched) -> AsyncIterator[Scene]:
    """B, X and C, for the block; C's tree holds one document only B may read."""
    async with (
        eidetica.open_instance(None) as b,
        eidetica.open_instance(None) as x,
        eidetica.open_instance(None) as c,
        wire.transport() as b_client,
        wire.transport() as x_client,
        wire.transport() as x_server,
        wire.transport() as c_server,
        trio.open_nursery() as nursery,
    ):
        tree = await c.create_tree(name="private")
        async with tree.transaction() as op:
            op.doc("notes").set("secret", "only for B")
        await tree.grant(b.public_key, "read")
        handler = SyncService(c, wire.codec).handle
        c_at = await nursery.start(c_server.serve, wire.any_port, handler)
        relay = Relay(x_client, c_at, wire.codec, alter)
        x_at = await nursery.start(x_server.serve, wire.any_port, relay.handle)
        yield Scene(wire, b, b_client, x, x_client, relay, x_at, c, c_at, tree.root_id)
        nursery.cancel_scope.cancel()


def refused_as_unknown(answer: Envelope, unknown: Envelope) -> bool:
    """Whether ``answer`` is the very answer an unknown session gets."""
    return (
        isinstance(answer.body, ErrorReply)
        and answer.body == unknown.body
        and answer.body.code == "unauthenticated"
        and answer.body.message == UNKNOWN_SESSION
        and answer.mac == unknown.mac == b""
    )


parametrize_wires = pytest.mark.parametrize("wire", WIRES, ids=lambda wire: wire.scheme)


@parametrize_wires
async def test_the_relay_carries_the_handshake_and_the_honest_peer_reads_through_it(
    wire: Wire,
) -> None:
    with trio.fail_after(20):
        async with relayed(wire) as scene:
            link = scene.link_through_x()
            assert await link.handshake(scene.b) == scene.c.public_key
            result = await link.sync_tree(scene.b, scene.tree)
            assert result.complete and result.received > 0
            assert scene.b.backend.tips(scene.tree) == scene.c.backend.tips(scene.tree)
            assert scene.relay.session == link.session
            assert all(request.mac for request in scene.relay.requests(SyncRequest))


@parametrize_wires
async def test_a_relay_cannot_make_requests_of_its_own_under_the_session_it_carried(
    wire: Wire,
) -> None:
    """The attack of issue 10: before version 2, X's own SyncRequest under B's session
    was answered with every entry of B's tree."""
    with trio.fail_after(20):
        async with relayed(wire) as scene:
            link = scene.link_through_x()
            await link.handshake(scene.b)
            await link.sync_tree(scene.b, scene.tree)
            stolen = scene.relay.session
            unknown = await scene.unknown_session_answer()
            (honest,) = scene.relay.requests(SyncRequest)
            own = scene.sync_request()
            for mac in (b"", os.urandom(32), honest.mac):
                answer = await scene.x_sends(own, stolen, mac)
                assert refused_as_unknown(answer, unknown), answer
            # None of it cost B its session: its next round through X goes on.
            assert (await link.sync_tree(scene.b, scene.tree)).complete


@parametrize_wires
async def test_a_relay_cannot_change_move_or_turn_around_the_honest_peers_request(
    wire: Wire,
) -> None:
    with trio.fail_after(20):
        async with relayed(wire) as scene:
            link = scene.link_through_x()
            await link.handshake(scene.b)
            await link.sync_tree(scene.b, scene.tree)
            unknown = await scene.unknown_session_answer()
            (honest,) = scene.relay.requests(SyncRequest)
            (answered,) = [reply for request, reply in scene.relay.exchanges if request is honest]
            assert isinstance(honest.body, SyncRequest) and honest.session is not None
            x_link = Link(scene.x_client, scene.c_at, wire.codec)
            await x_link.handshake(scene.x)  # X proves its own key: a session of its own
            assert x_link.session is not None
            changed = msgspec.structs.replace(honest.body, need=(scene.tree,))
            attempts = {
                "changed body": (changed, honest.session, honest.mac),
                "moved to X's session": (honest.body, x_link.session, honest.mac),
                "an answer's MAC as a request's": (honest.body, honest.session, answered.mac),
            }
            for name, (body, session, mac) in attempts.items():
                answer = await scene.x_sends(body, session, mac)
                assert refused_as_unknown(answer, unknown), name
            # What X can still do: send B's request again, unchanged, and get the
            # answer B got (which X carried anyway).
            replayed = await scene.x_sends(honest.body, honest.session, honest.mac)
            assert isinstance(replayed.body, SyncResponse)
            assert replayed.body == answered.body and replayed.mac == answered.mac


def _emptied(relay: Relay, answer: Envelope) -> Envelope:
    """C's page of entries, with the entries taken out (the MAC left as it was)."""
    if not isinstance(answer.body, SyncResponse):
        return answer
    return msgspec.structs.replace(answer, body=msgspec.structs.replace(answer.body, entries=()))


def _unsigned(relay: Relay, answer: Envelope) -> Envelope:
    """C's page of entries, with its MAC taken off."""
    if not isinstance(answer.body, SyncResponse):
        return answer
    return msgspec.structs.replace(answer, mac=b"")


def _forged(relay: Relay, answer: Envelope) -> Envelope:
    """A page of X's own making, with a MAC of X's own making (X knows everything but
    the session key)."""
    if not isinstance(answer.body, SyncResponse):
        return answer
    request = relay.requests(SyncRequest)[-1]
    body = msgspec.structs.replace(answer.body, entries=(), more=False)
    mac = answer_mac(os.urandom(32), relay.session, request.mac, body)
    return msgspec.structs.replace(answer, body=body, mac=mac)


@parametrize_wires
@pytest.mark.parametrize("alter", [_emptied, _unsigned, _forged], ids=lambda alter: alter.__name__)
async def test_an_answer_the_relay_changed_fails_that_request_on_that_link_only(
    wire: Wire, alter: Alter
) -> None:
    with trio.fail_after(20):
        async with relayed(wire, alter) as scene:
            link = scene.link_through_x()
            await link.handshake(scene.b)  # handshake answers carry no MAC: X left them
            with pytest.raises(BadMac):
                await link.sync_tree(scene.b, scene.tree)
            assert scene.b.backend.tips(scene.tree) == []
            direct = Link(scene.b_client, scene.c_at, wire.codec)
            await direct.handshake(scene.b)
            assert (await direct.sync_tree(scene.b, scene.tree)).complete


def _refused(relay: Relay, answer: Envelope) -> Envelope:
    """C's page of entries, swapped for an error of X's making, with no MAC."""
    if not isinstance(answer.body, SyncResponse):
        return answer
    return msgspec.structs.replace(answer, body=ErrorReply("not-found", "no tree"), mac=b"")


@parametrize_wires
async def test_a_relay_can_fail_a_request_as_if_it_dropped_it_and_no_more(wire: Wire) -> None:
    """An error answer without a MAC is taken for the failure it says: the node sends
    such answers when it has no key to MAC them with, and a relay could fail the
    request anyway by dropping it. It gives B nothing to store."""
    with trio.fail_after(20):
        async with relayed(wire, _refused) as scene:
            link = scene.link_through_x()
            await link.handshake(scene.b)
            with pytest.raises(RemoteError, match="not-found"):
                await link.sync_tree(scene.b, scene.tree)
            assert scene.b.backend.tips(scene.tree) == []


def _stale(relay: Relay, answer: Envelope) -> Envelope:
    """Answer B's second push with C's answer to its first."""
    acks = [reply for _, reply in relay.exchanges if isinstance(reply.body, Ack)]
    return acks[0] if acks and isinstance(answer.body, Ack) else answer


@parametrize_wires
async def test_a_relay_cannot_hand_back_the_answer_to_another_request(wire: Wire) -> None:
    with trio.fail_after(20):
        async with relayed(wire, _stale) as scene:
            link = scene.link_through_x()
            await link.handshake(scene.b)
            first = await link.call(SendEntries(tree=scene.tree, entries=()), Ack)
            assert first.entries == ()
            asked = SendEntries(tree=scene.tree, entries=(), need=(scene.tree,))
            with pytest.raises(BadMac):
                await link.call(asked, Ack)
            the_answer = scene.relay.exchanges[-1][1].body
            assert isinstance(the_answer, Ack) and the_answer.entries  # C did send the root
