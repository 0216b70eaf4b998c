"""The bounds every server keeps against its clients, over real sockets on 127.0.0.1:
connection caps, handshake and message deadlines, the byte budget, and walls between
connections. The attacks on whole ``eidetica serve`` processes are in tests/hostile."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket

from eidetica.actors.transports.accept import serve_listeners
from eidetica.actors.transports.admission import Admission, ByteBudget, ServerLimits
from eidetica.actors.transports.base import Origin
from eidetica.actors.transports.framing import guard
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.errors import TransportError
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.messages import ErrorReply, HandshakeDone
from tests.integration import test_http as http_test
from tests.integration.test_ws import echo, note, raw_client, serving, text_of

ANY_PORT = "ws://127.0.0.1:0"


def test_admission_caps_connections_in_all_and_per_source() -> None:
    admission = Admission(ServerLimits(max_connections=3, max_connections_per_source=2))
    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.1") is None
    assert "per source" in (admission.admit("10.0.0.1") or "")
    assert admission.admit("10.0.0.2") is None
    assert "limit" in (admission.admit("10.0.0.3") or "")
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.3") is None
    assert (admission.open, admission.refused) == (3, 2)


def test_a_byte_budget_refuses_what_does_not_fit_and_gets_it_all_back() -> None:
    budget = ByteBudget(100)
    assert budget.reserve(60) and not budget.reserve(41) and budget.reserve(40)
    budget.release(60)
    budget.release(40)
    assert (budget.used, budget.peak, budget.refused) == (0, 100, 1)


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="message_timeout"):
        ServerLimits(message_timeout=0)


@asynccontextmanager
async def accepting(handle: object, admission: Admission) -> AsyncIterator[tuple[str, int]]:
    """An accept loop on 127.0.0.1 for the block; yields its address."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_listeners(listeners, handle, admission, name="test")  # type: ignore[arg-type]
        )
        yield listeners[0].socket.getsockname()[:2]
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()


async def connect_from(source: str, address: tuple[str, int]) -> trio.SocketStream:
    return trio.SocketStream(await bound_socket(source, address))


async def bound_socket(source: str, address: tuple[str, int]) -> trio.socket.SocketType:
    """A TCP socket from ``source`` (a 127.x address) connected to ``address``."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def reason_of(closed: trio_websocket.ConnectionClosed) -> trio_websocket.CloseReason:
    assert closed.reason is not None
    return closed.reason


async def refused_read(address: tuple[str, int]) -> bytes:
    """What a connection from 127.0.0.2 reads; nothing, if the server reset it (the
    reset may even beat the end of ``connect``)."""
    try:
        stream = await connect_from("127.0.0.2", address)
    except ConnectionResetError:
        return b""
    async with stream:
        try:
            return bytes(await stream.receive_some(20))
        except trio.BrokenResourceError:
            return b""


async def test_a_connection_that_raises_ends_alone_and_the_loop_goes_on() -> None:
    served: list[bytes] = []

    async def handle(stream: trio.SocketStream, source: str) -> None:
        data = await stream.receive_some(100)
        if data == b"boom":
            raise RuntimeError("a bug in one connection")
        served.append(data)
        await stream.send_all(b"ok")

    admission = Admission()
    with trio.fail_after(10):
        async with accepting(handle, admission) as address:
            bad = await connect_from("127.0.0.1", address)
            await bad.send_all(b"boom")
            assert await bad.receive_some(10) == b""  # closed: only it
            good = await connect_from("127.0.0.1", address)
            await good.send_all(b"hi")
            assert await good.receive_some(10) == b"ok"
            await good.aclose()
            await bad.aclose()
    assert served == [b"hi"]


async def test_a_connection_that_resets_at_once_costs_the_loop_nothing() -> None:
    reached: list[str] = []

    async def handle(stream: trio.SocketStream, source: str) -> None:
        reached.append(source)
        await stream.send_all(b"hello")

    with trio.fail_after(10):
        async with accepting(handle, Admission()) as address:
            for _ in range(20):
                raw = socket.create_connection(address)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
            stream = await connect_from("127.0.0.1", address)
            assert await stream.receive_some(10) == b"hello"
            await stream.aclose()


async def test_past_the_cap_per_source_a_connection_is_reset_but_others_are_served() -> None:
    release = trio.Event()

    async def handle(stream: trio.SocketStream, source: str) -> None:
        await stream.send_all(source.encode())
        await release.wait()

    admission = Admission(ServerLimits(max_connections_per_source=2))
    with trio.fail_after(10):
        async with accepting(handle, admission) as address:
            held = [await connect_from("127.0.0.2", address) for _ in range(2)]
            for stream in held:
                assert await stream.receive_some(20) == b"127.0.0.2"
            assert not await refused_read(address)
            other = await connect_from("127.0.0.3", address)
            assert await other.receive_some(20) == b"127.0.0.3"
            assert admission.connections_from("127.0.0.2") == 2
            release.set()
            for stream in [*held, other]:
                await stream.aclose()
    assert admission.refused == 1


async def test_a_link_without_a_handshake_is_closed_at_the_deadline(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.001
    server = WebSocketTransport(limits=ServerLimits(handshake_timeout=5))
    with trio.fail_after(30):
        async with serving(server, echo) as at, raw_client(at) as client:
            began = trio.current_time()
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await client.get_message()
            assert trio.current_time() - began >= 5
    assert reason_of(closed.value).code == 1008
    assert "no handshake" in (reason_of(closed.value).reason or "")


async def test_a_message_that_dawdles_past_the_deadline_closes_its_link(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.001
    limits = ServerLimits(handshake_timeout=3600, message_timeout=5)
    server = WebSocketTransport(limits=limits)
    with trio.fail_after(60):
        async with serving(server, echo) as at:
            host, port = at.removeprefix("ws://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream, trio.open_nursery() as nursery:
                socket_ = await trio_websocket.wrap_client_stream(nursery, stream, host, "/")
                # A binary frame that declares 1,000 bytes, masked, then only 10 of them.
                await stream.send_all(bytes([0x82, 0xFE]) + (1000).to_bytes(2, "big"))
                await stream.send_all(b"\x00\x00\x00\x00" + b"x" * 10)
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await socket_.get_message()
                nursery.cancel_scope.cancel()
    assert reason_of(closed.value).code == 1008
    assert "took more than 5" in (reason_of(closed.value).reason or "")
    assert server.admission.budget.used == 0


async def test_a_message_past_the_node_budget_closes_its_link_with_1013() -> None:
    server = WebSocketTransport(limits=ServerLimits(max_buffered_bytes=1000))
    with trio.fail_after(10):
        async with serving(server, echo) as at:
            async with raw_client(at) as client:
                await client.send_message(b"x" * 5000)
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await client.get_message()
            assert reason_of(closed.value).code == 1013
            async with WebSocketTransport() as honest:  # small messages still pass
                assert text_of(await honest.request(at, note("hi"))) == "hi"
    assert server.admission.budget.used == 0
    assert server.admission.budget.refused >= 1


async def test_a_dialling_node_survives_a_server_that_answers_garbage() -> None:
    """A hostile server answers with bytes that are not an envelope, then resets:
    the request fails, the transport goes on."""

    async def hostile(request: trio_websocket.WebSocketRequest) -> None:
        link = await request.accept()
        await link.get_message()
        await link.send_message(b"\x81\xa4body\x81\xa4type\xa2\xff\xfe")
        await link.send_message(b"\x91" * 2000 + b"\xc0")
        await link.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, hostile, "127.0.0.1", 0, None
            )
            at = f"ws://127.0.0.1:{server.port}"
            async with WebSocketTransport(timeout=5) as dialler:
                for _ in range(2):
                    with pytest.raises(TransportError):
                        await dialler.request(at, note("hello?"))
            nursery.cancel_scope.cancel()


async def test_a_guarded_handler_answers_for_any_exception_with_the_request_id() -> None:
    async def broken(data: bytes, origin: Origin) -> bytes:
        raise OSError("the socket was gone when we looked")

    answer = await guard(broken, MSGPACK)(
        MSGPACK.encode(ErrorReply("x", "y"), 42), Origin("a", "b")
    )
    envelope = MSGPACK.decode(answer)
    assert envelope.id == 42
    assert isinstance(envelope.body, ErrorReply) and envelope.body.code == "internal"


def test_one_owner_gets_only_its_share_of_the_budget() -> None:
    budget = ByteBudget(100, per_owner=40)
    assert budget.reserve(40, "203.0.113.9") and not budget.reserve(1, "203.0.113.9")
    assert budget.reserve(40, "198.51.100.7")
    budget.release(40, "203.0.113.9")
    assert budget.held_by("203.0.113.9") == 0 and budget.used == 40


@asynccontextmanager
async def http_serving(transport: HttpTransport) -> AsyncIterator[tuple[str, int]]:
    """``transport`` serving an echo at 127.0.0.1 for the block; yields host and port."""
    async with trio.open_nursery() as nursery:
        at = await nursery.start(transport.serve, "http://127.0.0.1:0", http_test.echo)
        host, port = at.removeprefix("http://").split(":")
        yield host, int(port)
        nursery.cancel_scope.cancel()


async def read_to_the_end(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    received = b""
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:
        pass
    return received


@pytest.mark.parametrize(
    "opening",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    ],
    ids=["prior-knowledge", "h2c-upgrade"],
)
async def test_a_connection_asking_for_http2_is_closed(opening: bytes) -> None:
    """HTTP/2 would bypass every bound (unread bodies, stuck streams, no idle
    deadline): a connection that asks for it is closed, and HTTP/1.1 goes on."""
    transport = HttpTransport()
    with trio.fail_after(10):
        async with http_serving(transport) as address, HttpTransport() as honest:
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(opening)
                received = await read_to_the_end(stream)
            assert b"\x00\x00" not in received[received.find(b"\r\n\r\n") + 4 :]  # no h2 frames
            url = f"http://{address[0]}:{address[1]}"
            assert await honest.request(url, http_test.note("hi")) == http_test.note("hi")
    assert transport.admission.budget.used == 0  # the request's and answer's bytes, back


async def test_a_text_message_is_refused_at_its_first_fragment() -> None:
    """A text frame declaring 1 MiB closes its link (1003) on its first bytes, before
    a megabyte is buffered or charged."""
    server = WebSocketTransport()
    with trio.fail_after(10):
        async with serving(server, echo) as at:
            host, port = at.removeprefix("ws://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream, trio.open_nursery() as nursery:
                client = await trio_websocket.wrap_client_stream(nursery, stream, host, "/")
                size = 1024 * 1024
                await stream.send_all(bytes([0x81, 0xFF]) + size.to_bytes(8, "big") + bytes(4))
                await stream.send_all(b"x" * 100)
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await client.get_message()
                nursery.cancel_scope.cancel()
    assert reason_of(closed.value).code == 1003
    assert server.admission.budget.used == 0 and server.admission.budget.peak <= 100


async def test_a_handshake_done_nobody_asked_for_does_not_prove_a_link(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.001
    server = WebSocketTransport(limits=ServerLimits(handshake_timeout=5))
    unasked = MSGPACK.encode(HandshakeDone(session=bytes(32)), 7)
    with trio.fail_after(30):
        async with serving(server, echo) as at, raw_client(at) as client:
            await client.send_message(unasked)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await client.get_message()
    assert "no handshake" in (reason_of(closed.value).reason or "")


async def test_one_source_cannot_take_the_budget_from_another() -> None:
    limits = ServerLimits(max_buffered_bytes=10_000, max_buffered_bytes_per_source=4_000)
    server = WebSocketTransport(limits=limits)
    with trio.fail_after(10):
        async with serving(server, echo) as at:
            host, port = at.removeprefix("ws://").split(":")
            stream = trio.SocketStream(await bound_socket("127.0.0.2", (host, int(port))))
            async with stream, trio.open_nursery() as nursery:
                hog = await trio_websocket.wrap_client_stream(nursery, stream, host, "/")
                await hog.send_message(b"x" * 5_000)  # over its share: closed 1013
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await hog.get_message()
                nursery.cancel_scope.cancel()
            async with WebSocketTransport() as honest:  # from 127.0.0.1: its own share
                assert text_of(await honest.request(at, note("hi"))) == "hi"
    assert reason_of(closed.value).code == 1013
