"""Hostile clients and a hostile server, over raw sockets on loopback.

Each attacker connects from an address of its own in 127.0.0.0/8 (127.0.0.1 is left
to the honest peer), so that limits per source fall on the attacker, not on the
honest peer. WebSocket clients speak through wsproto directly, with no reader task of
their own, so a test decides exactly which bytes go out and when, and can reset the
connection at any moment; HTTP clients write raw requests and read raw answers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from eidetica.errors import ProtocolError
from eidetica.protocol.codec import JSON, MSGPACK
from eidetica.protocol.handshake import Initiator, Proven, Responder
from eidetica.protocol.keyexchange import EphemeralKey
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.mac import request_mac
from eidetica.protocol.messages import (
    ANSWERS,
    ErrorReply,
    HandshakeDone,
    HandshakeFinish,
    HandshakeInit,
    HandshakeReply,
)
from eidetica.protocol.messages import (
    Message as ProtocolMessage,
)

ATTACKER = "127.0.0.2"
"""Where a single attacker connects from."""

GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What a socket raises once the other side has reset or closed it."""

# -- hostile bytes --------------------------------------------------------------------

NOT_UTF8 = b"\x81\xa4body\x81\xa4type\xa2\xff\xfe"
"""MessagePack ``{"body": {"type": <two bytes that are not UTF-8>}}``."""

DEEP_BODY = b"\x82\xa4body\x81\xa4type\xa1x\xa1z" + b"\x91" * 2000 + b"\xc0"
"""An envelope-like map whose second value nests an array 2,000 deep."""

DEEP_PLAIN = b"\x91" * 2000 + b"\xc0"
"""An array nested 2,000 deep, and nothing else."""

NOT_UTF8_JSON = b'{"v":1,"body":{"type":"\xff\xfe"}}'
DEEP_BODY_JSON = b'{"v":1,"body":{"type":"sync","z":' + b"[" * 2000 + b"]" * 2000 + b"}}"
DEEP_PLAIN_JSON = b"[" * 2000 + b"]" * 2000

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
"""A WebSocket upgrade request, as raw bytes."""


def source(index: int) -> str:
    """The ``index``-th of many attacker addresses: 127.0.1.1, 127.0.1.2, ... (never
    127.0.0.x, which the honest peer and the single attacker use)."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def handshake_init(key: SigningKey) -> HandshakeInit:
    """A fresh, valid Init for ``key``: a new challenge and ephemeral key, the current time."""
    return HandshakeInit(
        public_key=key.public_key,
        challenge=os.urandom(32),
        ephemeral=EphemeralKey.from_random(os.urandom(32)).public,
        time=int(time.time()),
    )


def frame_header(length: int) -> bytes:
    """A client's header of one final binary frame of ``length`` bytes, masked with
    the key 0 (so the payload goes as it is)."""
    if length < 126:
        sized = bytes([0x80 | length])
    elif length < 1 << 16:
        sized = bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        sized = bytes([0x80 | 127]) + struct.pack("!Q", length)
    return b"\x82" + sized + b"\x00\x00\x00\x00"


# -- sockets --------------------------------------------------------------------------


async def connect_from(origin: str, port: int) -> trio.SocketStream:
    """A TCP connection from ``origin`` to 127.0.0.1:``port``."""
    sock = trio.socket.socket()
    try:
        await sock.bind((origin, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset (SO_LINGER 0) rather than a goodbye."""
    with contextlib.suppress(OSError):  # already gone
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def closed_by_peer(stream: trio.SocketStream) -> None:
    """Wait until the other side closes or resets ``stream``, reading (and dropping)
    whatever it sends until then."""
    try:
        while await stream.receive_some(65536):
            pass
    except GONE:
        pass


# -- WebSocket clients ----------------------------------------------------------------


class Refused(Exception):
    """The server turned a connection away (a reset, a close, or a refused upgrade)."""


class RawWebSocket:
    """A client WebSocket connection whose bytes the test controls: wsproto over one
    TCP stream, read only when the test reads."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self.closed = False
        self.close_code: int | None = None

    async def request_upgrade(self) -> None:
        """Send the upgrade request (and not wait for the answer)."""
        await self.stream.send_all(self.protocol.send(Request(host="127.0.0.1", target="/")))

    async def upgrade(self) -> None:
        """Ask for the upgrade and wait for it; :class:`Refused` if it does not come."""
        try:
            await self.request_upgrade()
        except GONE as exc:
            raise Refused(f"reset while upgrading: {exc!r}") from exc
        event = await self._next()
        if isinstance(event, RejectConnection) or not isinstance(event, AcceptConnection):
            raise Refused(f"the upgrade was refused: {event!r}")

    async def send(self, *messages: bytes) -> None:
        """Send each of ``messages`` as one binary message, in one write."""
        data = b"".join(self.protocol.send(Message(data=message)) for message in messages)
        await self.stream.send_all(data)

    async def receive(self) -> bytes | None:
        """The next whole message; ``None`` once the connection has closed."""
        parts: list[bytes] = []
        while True:
            event = await self._next()
            if event is None:
                return None
            if isinstance(event, BytesMessage | TextMessage):
                data = event.data
                parts.append(bytes(data) if isinstance(data, bytes | bytearray) else data.encode())
                if event.message_finished:
                    return b"".join(parts)
            elif isinstance(event, Ping):
                await self._answer(event.response())
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                await self._answer(event.response())
                self.closed = True
                return None

    async def next_answer(self) -> ProtocolMessage | None:
        """The next answer that arrives, decoded; ``None`` once the connection has
        closed. Requests the node sends over the link (it handshakes back) are skipped."""
        while (data := await self.receive()) is not None:
            body = MSGPACK.decode(data).body
            if body.__struct_config__.tag in ANSWERS:
                return body
        return None

    async def call(self, body: ProtocolMessage, proven: Proven | None = None) -> ProtocolMessage:
        """Send one request (under ``proven``'s session, with its MAC, if given) and wait
        for its answer (matched by id)."""
        request_id = int.from_bytes(os.urandom(6), "big")
        if proven is None:
            await self.send(MSGPACK.encode(body, request_id))
        else:
            mac = request_mac(proven.session_key, proven.session, body)
            await self.send(MSGPACK.encode(body, request_id, proven.session, mac))
        while (data := await self.receive()) is not None:
            envelope = MSGPACK.decode(data)
            if envelope.id == request_id and envelope.body.__struct_config__.tag in ANSWERS:
                return envelope.body
        raise Refused(
            f"the connection closed before the answer to {body!r} (code {self.close_code})"
        )

    async def _answer(self, event: Event) -> None:
        try:
            await self.stream.send_all(self.protocol.send(event))
        except (*GONE, LocalProtocolError):
            pass

    async def _next(self) -> Event | None:
        while not self._events:
            if self.closed:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except GONE:
                data = b""
            try:
                self.protocol.receive_data(data or None)
                self._events.extend(self.protocol.events())
            except RemoteProtocolError:
                self.closed = True
                return None
            if not data:
                self.closed = True
                if not self._events:
                    return None
        return self._events.popleft()

    def reset(self) -> None:
        reset(self.stream)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def websocket(port: int, origin: str = ATTACKER) -> RawWebSocket:
    """An upgraded WebSocket connection from ``origin``; :class:`Refused` if the node
    turns it away."""
    try:
        stream = await connect_from(origin, port)
    except OSError as exc:
        raise Refused(f"cannot connect: {exc!r}") from exc
    client = RawWebSocket(stream)
    try:
        await client.upgrade()
    except BaseException:
        await client.aclose()
        raise
    return client


async def handshake(client: RawWebSocket, key: SigningKey) -> Proven:
    """A complete handshake for ``key`` over ``client``; its session and key."""
    initiator = Initiator(key, now=time.time())
    reply = await client.call(initiator.start())
    assert isinstance(reply, HandshakeReply), reply
    done = await client.call(initiator.receive_reply(reply))
    assert isinstance(done, HandshakeDone), done
    return initiator.receive_done(done)


def outcome(body: ProtocolMessage | None) -> str:
    """A short name for an answer, to count them: its type, or an error's code."""
    if body is None:
        return "closed"
    if isinstance(body, ErrorReply):
        return f"error:{body.code}:{body.message[:24]}"
    return str(body.__struct_config__.tag)


async def pipeline(client: RawWebSocket, requests: Iterable[bytes], count: int) -> Counter[str]:
    """Send ``requests`` as fast as the link takes them while reading the answers;
    how many answers of each kind came (plus ``closed`` if the link closed before
    ``count`` of them)."""
    seen: Counter[str] = Counter()

    async def send_all() -> None:
        batch: list[bytes] = []
        try:
            for request in requests:
                batch.append(request)
                if len(batch) == 64:
                    await client.send(*batch)
                    batch = []
            await client.send(*batch)
        except (*GONE, LocalProtocolError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        for _ in range(count):
            body = await client.next_answer()
            seen[outcome(body)] += 1
            if body is None:
                break
        nursery.cancel_scope.cancel()
    return seen


# -- HTTP clients ---------------------------------------------------------------------


def post(
    body: bytes, *, length: int | None = None, content_type: str = "application/json"
) -> bytes:
    """A raw ``POST /api/v0`` with ``body``, declaring ``length`` (default: its own)."""
    declared = len(body) if length is None else length
    head = (
        f"POST /api/v0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    return head.encode() + body


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class HttpReader:
    """Reads HTTP/1.1 answers (with a Content-Length) off a raw stream."""

    stream: trio.SocketStream
    _buffer: bytearray = field(default_factory=bytearray)

    async def answer(self) -> tuple[int, bytes] | None:
        """The next answer's status and body; ``None`` once the stream has ended."""
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                return None
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self._buffer = bytearray(rest)
        while len(self._buffer) < length:
            if not await self._fill():
                return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return status, body

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except GONE:
            return False
        self._buffer += data
        return bool(data)


async def http_pipeline(stream: trio.SocketStream, requests: list[bytes]) -> Counter[str]:
    """Write ``requests`` back to back on one connection while reading the answers;
    how many answers of each status came (``closed`` if the stream ended first)."""
    seen: Counter[str] = Counter()

    async def send_all() -> None:
        try:
            for start in range(0, len(requests), 64):
                await stream.send_all(b"".join(requests[start : start + 64]))
        except GONE:
            pass

    reader = HttpReader(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        for _ in requests:
            answer = await reader.answer()
            if answer is None:
                seen["closed"] += 1
                break
            status, body = answer
            seen[f"{status}:{_json_outcome(body)}"] += 1
        nursery.cancel_scope.cancel()
    return seen


def _json_outcome(body: bytes) -> str:
    try:
        return outcome(JSON.decode(body).body)
    except ProtocolError:
        return "not-an-envelope"


# -- a hostile server -----------------------------------------------------------------


@dataclass
class HostileServer:
    """A WebSocket server on 127.0.0.1 that a node dials, and that answers as
    ``behaviour`` says. ``connections`` counts the dials it accepted."""

    behaviour: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    address: str = ""
    connections: int = 0
    _dialled: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    def __post_init__(self) -> None:
        self._responder = Responder(self.key)

    async def dialled(self, times: int) -> None:
        """Wait until nodes have dialled it ``times`` times in all."""
        while self.connections < times:
            await self._dialled.park()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.address)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._dialled.unpark_all()
        protocol = WSConnection(ConnectionType.SERVER)
        parts: list[bytes] = []
        try:
            while data := await stream.receive_some(65536):
                protocol.receive_data(data)
                for event in protocol.events():
                    if isinstance(event, Request):
                        await stream.send_all(protocol.send(AcceptConnection()))
                    elif isinstance(event, Ping):
                        await stream.send_all(protocol.send(event.response()))
                    elif isinstance(event, BytesMessage):
                        parts.append(bytes(event.data))
                        if not event.message_finished:
                            continue
                        message, parts = b"".join(parts), []
                        if await self._answer(stream, protocol, message):
                            return
                    elif isinstance(event, CloseConnection):
                        return
        except (*GONE, LocalProtocolError, RemoteProtocolError, ProtocolError):
            pass  # whatever the node did, the connection is over
        finally:
            reset(stream)

    async def _answer(
        self, stream: trio.SocketStream, protocol: WSConnection, message: bytes
    ) -> bool:
        """Answer one message from the node; ``True`` once done with the connection
        (which is then reset)."""

        async def send(*datas: bytes) -> None:
            await stream.send_all(b"".join(protocol.send(Message(data=data)) for data in datas))

        envelope = MSGPACK.decode(message)
        body = envelope.body
        match self.behaviour:
            case "not-utf8":
                await send(NOT_UTF8, NOT_UTF8)
                return True
            case "deep":
                await send(DEEP_BODY, DEEP_PLAIN)
                return True
            case "answer-then-reset":
                await send(MSGPACK.encode(self._true_answer(body), envelope.id))
                return True
            case "pings-then-reset":
                # An answer, then many pings the node must answer, and a reset while it does.
                answer = MSGPACK.encode(self._true_answer(body), envelope.id)
                pings = b"".join(protocol.send(Ping(payload=bytes(100))) for _ in range(2000))
                await stream.send_all(protocol.send(Message(data=answer)) + pings)
                return True
            case "half-then-reset":
                # A frame header for 1,000 bytes (unmasked, as a server sends) and 10 of them.
                await stream.send_all(
                    b"\x82\x7e\x03\xe8" + MSGPACK.encode(ErrorReply("x", "y"))[:10]
                )
                return True
            case "proven-then-garbage":
                if isinstance(body, HandshakeInit):
                    reply = self._responder.receive_init(body, now=time.time())
                    await send(MSGPACK.encode(reply, envelope.id))
                    return False
                if isinstance(body, HandshakeFinish):
                    done = self._responder.receive_finish(body, now=time.time()).done
                    await send(MSGPACK.encode(done, envelope.id))
                await send(NOT_UTF8, DEEP_BODY, NOT_UTF8, DEEP_PLAIN)
                return True
        raise AssertionError(f"no behaviour {self.behaviour!r}")

    def _true_answer(self, body: ProtocolMessage) -> ProtocolMessage:
        """What an honest server would answer: a Reply to an Init, else a refusal."""
        if isinstance(body, HandshakeInit):
            return self._responder.receive_init(body, now=time.time())
        return ErrorReply(code="unauthenticated", message="no session")


@asynccontextmanager
async def hostile_server(behaviour: str) -> AsyncIterator[HostileServer]:
    """A :class:`HostileServer` listening for the block."""
    server = HostileServer(behaviour)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()
