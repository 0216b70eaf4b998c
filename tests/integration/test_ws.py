"""The WebSocket transport over real sockets on 127.0.0.1: one connection per peer,
answers matched to requests by id, dropped links noticed and redialled."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
import trio_websocket

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.base import Handler, Origin, Transport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.errors import RemoteError, TransportError, Unreachable
from eidetica.protocol import limits
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.messages import Ack, ErrorReply, SendEntries
from tests.nodes import ws_node

ANY_PORT = "ws://127.0.0.1:0"


TREE = "0" * 64


def note(text: str) -> bytes:
    """A request whose body carries ``text``, so an answer shows which request it is for."""
    return MSGPACK.encode(SendEntries(tree=TREE, entries=(text.encode(),)))


def text_of(message: bytes) -> str:
    """The text a :func:`note` request, or an :func:`echo` answer to one, carries."""
    body = MSGPACK.decode(message).body
    assert isinstance(body, SendEntries | Ack), body
    return body.entries[0].decode()


async def echo(data: bytes, origin: Origin) -> bytes:
    """Answers a note with its text under the request's id, as SyncService answers."""
    envelope = MSGPACK.decode(data)
    assert isinstance(envelope.body, SendEntries)
    return MSGPACK.encode(
        Ack(stored=0, rejected=0, held=0, entries=envelope.body.entries), envelope.id
    )


@asynccontextmanager
async def serving(
    transport: WebSocketTransport, handler: Handler, address: str = ANY_PORT
) -> AsyncIterator[str]:
    """Serve ``handler`` for the block; yield the bound address; stop serving after."""
    async with trio.open_nursery() as nursery:
        yield await nursery.start(transport.serve, address, handler)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_client(
    address: str, max_message_size: int = limits.MAX_MESSAGE_BYTES
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A bare WebSocket connection to ``address``, whose TCP stream is closed with the
    block even when the server closed first (``open_websocket_url`` leaves it open)."""
    host, port = address.removeprefix("ws://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream, trio.open_nursery() as nursery:
        socket = await trio_websocket.wrap_client_stream(
            nursery, stream, host, "/", max_message_size=max_message_size
        )
        yield socket
        await socket.aclose()
        nursery.cancel_scope.cancel()


def test_websocket_transport_is_a_transport() -> None:
    transport: Transport = WebSocketTransport()
    assert transport.scheme == "ws"


async def test_serve_reports_the_bound_port_and_answers() -> None:
    seen: list[int | None] = []

    async def handler(data: bytes, origin: Origin) -> bytes:
        seen.append(MSGPACK.decode(data).id)
        return await echo(data, origin)

    with trio.fail_after(10):
        async with WebSocketTransport() as client, serving(WebSocketTransport(), handler) as at:
            host, port = at.removeprefix("ws://").split(":")
            assert host == "127.0.0.1" and int(port) > 0
            answer = await client.request(at, MSGPACK.encode(SendEntries(TREE, (b"hi",)), 7))
    assert text_of(answer) == "hi"
    # The transport stamps ids of its own, whatever the caller put in the envelope.
    assert seen == [MSGPACK.decode(answer).id]
    assert seen[0] is not None and seen[0] != 7


async def test_concurrent_requests_get_their_own_answers_even_in_reverse_order() -> None:
    count = 8
    answered = [trio.Event() for _ in range(count)]
    order: list[int] = []

    async def backwards(data: bytes, origin: Origin) -> bytes:
        """Answers request k only once request k+1 was answered: last first."""
        index = int(text_of(data))
        if index + 1 < count:
            await answered[index + 1].wait()
        order.append(index)
        answered[index].set()
        return await echo(data, origin)

    results: dict[int, str] = {}
    server = WebSocketTransport()
    with trio.fail_after(10):
        async with WebSocketTransport() as client, serving(server, backwards) as at:

            async def ask(index: int) -> None:
                results[index] = text_of(await client.request(at, note(str(index))))

            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(ask, index)
    assert order == list(reversed(range(count)))
    assert results == {index: str(index) for index in range(count)}
    assert client.dials == 1 and server.accepted == 1


async def test_many_requests_share_one_connection() -> None:
    server = WebSocketTransport()
    with trio.fail_after(10):
        async with WebSocketTransport() as client, serving(server, echo) as at:
            for index in range(20):
                assert text_of(await client.request(at, note(f"one-{index}"))) == f"one-{index}"

            async def ask(index: int) -> None:
                assert text_of(await client.request(at, note(f"many-{index}"))) == f"many-{index}"

            async with trio.open_nursery() as nursery:
                for index in range(40):
                    nursery.start_soon(ask, index)
    assert client.dials == 1
    assert server.accepted == 1


async def test_server_going_away_fails_in_flight_requests_and_the_next_request_redials() -> None:
    arrived = trio.Event()
    failed = trio.Event()
    errors: list[TransportError] = []

    async def stuck(data: bytes, origin: Origin) -> bytes:
        arrived.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server = WebSocketTransport()
    with trio.fail_after(10):
        async with WebSocketTransport() as client, trio.open_nursery() as nursery:

            async def in_flight(at: str) -> None:
                try:
                    await client.request(at, note("lost"))
                except TransportError as exc:
                    errors.append(exc)
                failed.set()

            async with serving(server, stuck) as at:
                nursery.start_soon(in_flight, at)
                await arrived.wait()
            await failed.wait()
            assert len(errors) == 1 and not isinstance(errors[0], Unreachable)
            assert "closed" in str(errors[0])

            # The same port again: the dead connection was forgotten, so this dials.
            async with serving(server, echo, at) as again:
                assert again == at
                assert text_of(await client.request(at, note("back"))) == "back"
    assert client.dials == 2
    assert server.accepted == 2


async def test_nobody_listening_is_unreachable() -> None:
    with trio.fail_after(10), trio.socket.socket() as placeholder:
        # Bound but not listening: the port is ours, and connecting to it is refused.
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        async with WebSocketTransport() as client:
            with pytest.raises(Unreachable):
                await client.request(f"ws://127.0.0.1:{port}", note("anyone?"))


async def test_a_server_that_refuses_the_websocket_handshake_is_unreachable() -> None:
    async def not_websocket(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    with trio.fail_after(10):
        async with WebSocketTransport() as client, trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, not_websocket, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(Unreachable, match="handshake failed"):
                await client.request(f"ws://127.0.0.1:{port}", note("hello?"))
            nursery.cancel_scope.cancel()


async def test_an_oversized_message_closes_the_connection_with_a_reason() -> None:
    big = MSGPACK.encode(SendEntries(tree=TREE, entries=(b"x" * 8000,)))
    with trio.fail_after(10):
        async with (
            WebSocketTransport() as client,
            serving(WebSocketTransport(max_message_bytes=4096), echo) as at,
        ):
            with pytest.raises(TransportError, match="1009") as raised:
                await client.request(at, big)
            assert not isinstance(raised.value, Unreachable)
            # The next, smaller request dials again and is answered.
            assert text_of(await client.request(at, note("small"))) == "small"
            assert client.dials == 2


async def test_a_request_over_the_limit_is_refused_before_sending() -> None:
    big = MSGPACK.encode(SendEntries(tree=TREE, entries=(b"x" * 8000,)))
    with trio.fail_after(10):
        async with (
            WebSocketTransport(max_message_bytes=4096) as client,
            serving(WebSocketTransport(), echo) as at,
        ):
            with pytest.raises(TransportError, match="over the limit"):
                await client.request(at, big)
            assert client.dials == 0


async def test_bytes_that_are_not_an_envelope_are_refused() -> None:
    with trio.fail_after(10):
        async with WebSocketTransport() as client, serving(WebSocketTransport(), echo) as at:
            with pytest.raises(TransportError, match="cannot send"):
                await client.request(at, b"not msgpack at all \xc1")


async def test_a_failing_handler_is_answered_with_an_internal_error() -> None:
    async def broken(data: bytes, origin: Origin) -> bytes:
        raise RuntimeError("bug")

    with trio.fail_after(10):
        async with WebSocketTransport() as client, serving(WebSocketTransport(), broken) as at:
            answer = MSGPACK.decode(await client.request(at, note("x"))).body
    assert answer == ErrorReply(code="internal", message="the node failed to answer this request")


async def test_a_missing_pong_closes_the_connection(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.001
    release = trio.Event()

    async def deaf(request: trio_websocket.WebSocketRequest) -> None:
        """Accepts, then never reads: once its small queue is full, even pings go
        unanswered, like a peer that hangs."""
        await request.accept()
        await release.wait()

    client = WebSocketTransport(timeout=600, ping_interval=20, ping_timeout=20)
    errors: list[TransportError] = []
    noticed: list[float] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as servers:
            server = await servers.start(trio_websocket.serve_websocket, deaf, "127.0.0.1", 0, None)
            at = f"ws://127.0.0.1:{server.port}"
            async with client, trio.open_nursery() as nursery:

                async def ask() -> None:
                    try:
                        await client.request(at, note("hello?"))
                    except TransportError as exc:
                        errors.append(exc)
                        noticed.append(trio.current_time() - started)

                started = trio.current_time()
                # Two requests: the first fills the deaf server's queue, the second
                # stalls its reader.
                nursery.start_soon(ask)
                nursery.start_soon(ask)
            release.set()
            servers.cancel_scope.cancel()
    assert len(errors) == 2
    assert all("no pong within 20 s" in str(error) for error in errors)
    assert all(40 <= after < 41 for after in noticed)


async def test_requests_need_the_running_transport() -> None:
    with pytest.raises(TransportError, match="not running"):
        await WebSocketTransport().request("ws://127.0.0.1:1", note("x"))


@pytest.mark.parametrize("address", ["http://127.0.0.1:1", "ws://", "ws://127.0.0.1:port"])
async def test_bad_addresses_are_refused(address: str) -> None:
    async with WebSocketTransport() as client:
        with pytest.raises(TransportError):
            await client.request(address, note("x"))


async def test_serving_a_taken_port_raises() -> None:
    with trio.fail_after(10):
        async with serving(WebSocketTransport(), echo) as at, trio.open_nursery() as nursery:
            with pytest.raises(TransportError, match="cannot listen"):
                await nursery.start(WebSocketTransport().serve, at, echo)


async def test_two_nodes_sync_a_tree_both_ways_over_websocket(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            ws_node(tmp_path / "a") as (a, a_sync, a_ws),
            ws_node(tmp_path / "b") as (b, b_sync, b_ws),
        ):
            a_at = await a_sync.start_server(ANY_PORT)
            b_at = await b_sync.start_server(ANY_PORT)
            assert a_at.startswith("ws://127.0.0.1:") and b_at.startswith("ws://127.0.0.1:")

            tree = await a.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("from_a", 1)
            await tree.grant(b.public_key, "write")
            peer_b = await a_sync.connect(b_at)
            assert peer_b == b.public_key
            await a_sync.add_tree_sync(peer_b, tree.root_id)
            peer_a = await b_sync.connect(a_at)
            await b_sync.add_tree_sync(peer_a, tree.root_id)

            await a_sync.sync_with_peer(peer_b)  # bootstrap b
            theirs = await b.open_tree(tree.root_id)
            async with theirs.transaction() as op:
                op.doc("todo").set("from_b", 2)
            async with tree.transaction() as op:
                op.doc("todo").set("from_a_again", 3)
            await b_sync.sync_with_peer(peer_a)
            await a_sync.sync_with_peer(peer_b)

            assert await tree.tips() == await theirs.tips()
            expected = {"from_a": 1, "from_b": 2, "from_a_again": 3}
            assert (await tree.doc("todo")).to_dict() == expected
            assert (await theirs.doc("todo")).to_dict() == expected
    # Every request of each node went over its one connection to the other.
    assert a_ws.dials == 1 and b_ws.dials == 1
    assert a_ws.accepted == 1 and b_ws.accepted == 1


def test_a_dead_link_is_noticed_within_the_connection_check_interval() -> None:
    """The keepalive gives up on a silent link before the next connection check."""
    transport = WebSocketTransport()
    assert transport.ping_interval + transport.ping_timeout < SyncConfig().connection_check


async def test_bad_requests_get_error_frames_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with (
            eidetica.open_instance(tmp_path / "a") as a,
            eidetica.open_instance(tmp_path / "b") as b,
            eidetica.open_instance(tmp_path / "c") as c,
            open_sync(a) as a_sync,
            open_sync(b) as b_sync,
            WebSocketTransport() as c_ws,
        ):
            at = await a_sync.start_server(ANY_PORT)
            shared = await a.create_tree(name="shared")
            await shared.grant(b.public_key, "read")
            private = await a.create_tree(name="private")
            anonymous = MSGPACK.encode(SendEntries(tree=shared.root_id, entries=()))
            bad = {
                b"\xc1 this is not msgpack": "malformed",
                anonymous[:-7]: "malformed",  # truncated
                msgspec.msgpack.encode({"v": 99, "body": {"type": "sync"}}): "unknown-version",
                msgspec.msgpack.encode({"v": 3, "body": {"type": "launch"}}): "unknown-message",
                anonymous: "unauthenticated",  # valid, but no session
            }
            caplog.clear()
            async with raw_client(at) as raw:
                for request, code in bad.items():
                    await raw.send_message(request)
                    frame = await raw.get_message()
                    assert isinstance(frame, bytes)
                    answer = MSGPACK.decode(frame).body
                    assert isinstance(answer, ErrorReply) and answer.code == code, answer
            # C proves its key, then asks for a tree it may not read: as if none existed.
            link = Link(c_ws, at, MSGPACK)
            assert await link.handshake(c) == a.public_key
            with pytest.raises(RemoteError, match="not-found"):
                await link.call(SendEntries(tree=private.root_id, entries=()), Ack)
            refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
            assert len(refusals) == len(bad) + 1  # each logged once, with its reason
            assert (await a_sync.status()).refused_requests == len(bad) + 1

            # Frames the protocol does not speak close that connection, and only it.
            oversized = b"x" * (limits.MAX_MESSAGE_BYTES + 1)
            frames: list[tuple[str | bytes, int]] = [("text", 1003), (oversized, 1009)]
            for unspoken, close_code in frames:
                async with raw_client(at, 2 * limits.MAX_MESSAGE_BYTES) as raw:
                    await raw.send_message(unspoken)
                    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                        await raw.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == close_code

            # None of it stopped the server: B syncs as usual.
            peer_a = await b_sync.connect(at)
            await b_sync.add_tree_sync(peer_a, shared.root_id)
            await b_sync.sync_with_peer(peer_a)
            assert await (await b.open_tree(shared.root_id)).tips() == await shared.tips()


async def test_a_mistyped_address_is_an_error_and_the_engine_goes_on(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with ws_node(tmp_path / "a") as a:
            with pytest.raises(TransportError, match="not a ws address"):
                await a.sync.connect("ws://[::1")
            assert (await a.sync.status()).crashed == []


async def test_a_client_that_resets_during_the_upgrade_harms_nothing(tmp_path: Path) -> None:
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(20):
        async with ws_node(tmp_path / "a") as a, ws_node(tmp_path / "b") as b:
            at = await a.sync.start_server(ANY_PORT)
            for _ in range(3):
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", int(at.rsplit(":", 1)[1])))
                # Linger 0: closing sends a reset, not a goodbye.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await sock.send(upgrade)
                sock.close()
            await trio.testing.wait_all_tasks_blocked(0.05)
            status = await a.sync.status()
            assert [server.address for server in status.servers] == [at] and status.crashed == []
            assert await b.sync.connect(at) == a.inst.public_key  # still serving
