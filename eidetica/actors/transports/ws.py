"""The WebSocket transport: one long-lived connection per peer, requests matched by id.

A node that talks to a peer often should not pay a TCP and HTTP handshake per
request, and should notice quickly when the peer is gone. So a caller keeps one
WebSocket connection per address, dialled on the first request and kept open; any
number of requests travel over it at once, each in a binary message holding one
MessagePack envelope, and answers come back in whatever order the server finishes
them. The envelope's ``id`` says which answer belongs to which request: the
transport stamps every request with a fresh id of its own (callers need not set
one), and the served handler answers with the id of the request it answers, as
:meth:`~eidetica.actors.service.SyncService.handle` does.

Both ends ping every ``ping_interval``; a connection whose pong does not come back
within ``ping_timeout`` is closed, its waiting requests fail with
:class:`TransportError`, and the next request to that address dials again. Backoff
between redials is the caller's business (the peer actor's), not the transport's.

Connections outlive the requests that open them, so they need a nursery: a transport
that sends requests is used as ``async with WebSocketTransport() as ws:``, and
leaving the block closes its connections. Serving needs no such block; ``serve``
runs in the caller's nursery like any other actor.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Self
from urllib.parse import SplitResult, urlsplit

import msgspec
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    wrap_client_stream,
)

from eidetica.actors.transports.base import Handler, PendingAnswer
from eidetica.errors import ProtocolError, TransportError, Unreachable
from eidetica.protocol import limits
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.messages import ErrorReply

log = logging.getLogger(__name__)

SCHEME = "ws"

_RECEIVE_BYTES = 64 * 1024
"""How much one read from the socket takes; trio-websocket's 4 KiB default would
make a 16 MiB message cost four thousand reads."""

_UNSUPPORTED_DATA = 1003
"""The close code for a text message: the protocol speaks binary only."""


class _IdProbe(msgspec.Struct):
    """Just the ``id`` of an envelope, so routing an answer does not decode it all."""

    id: int | None = None


_probe = msgspec.msgpack.Decoder(_IdProbe)


def _envelope_id(data: bytes) -> int | None:
    """The request id in an envelope's bytes, or ``None`` if it has none or is not one."""
    try:
        return _probe.decode(data).id
    except msgspec.DecodeError:
        return None


def _parse(address: str) -> SplitResult:
    """The parts of a ``ws://HOST[:PORT][/PATH]`` address, or :class:`TransportError`."""
    parts = urlsplit(address)
    if parts.scheme != SCHEME:
        raise TransportError(f"not a ws address: {address!r}")
    try:
        parts.port  # noqa: B018 -- reading it is what checks it
    except ValueError as exc:
        raise TransportError(f"bad port in {address!r}: {exc}") from exc
    if not parts.hostname:
        raise TransportError(f"no host in {address!r}")
    return parts


def _describe(reason: CloseReason | None) -> str:
    if reason is None:
        return "closed"
    text = f"{reason.code} {reason.name}"
    return f"{text}: {reason.reason}" if reason.reason else text


class _Connection:
    """One dialled connection: its socket, the requests waiting on it, and the scope
    that closes it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket: WebSocketConnection | None = None
        self.pending: dict[int, PendingAnswer] = {}
        self.closed: str | None = None
        """Why the connection closed, once it has."""
        self.scope = trio.CancelScope()
        """Cancelling it ends the connection's work and starts a graceful close."""


class WebSocketTransport:
    """The :class:`~eidetica.actors.transports.base.Transport` for ``ws://``.

    ``timeout`` bounds one request, dialling included; ``connect_timeout`` the
    opening handshake of a connection and ``close_timeout`` its closing one.
    ``ping_interval`` and ``ping_timeout`` are the keepalive (``math.inf`` turns it
    off). ``max_message_bytes`` bounds a message either way: a bigger request is
    refused before it is sent, and a peer that sends a bigger message has its
    connection closed with code 1009. A server runs at most ``max_concurrent``
    handlers per connection at once, and stops reading that connection until one
    finishes.

    ``dials`` counts connections this transport opened, ``accepted`` the ones its
    servers accepted.
    """

    scheme = SCHEME

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        max_message_bytes: int = limits.MAX_MESSAGE_BYTES,
        max_concurrent: int = 16,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"a connection must run at least one handler, not {max_concurrent}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_message_bytes = max_message_bytes
        self.max_concurrent = max_concurrent
        self.dials = 0
        self.accepted = 0
        self._nursery: trio.Nursery | None = None
        self._context: AbstractAsyncContextManager[Self] | None = None
        self._connections: dict[str, _Connection] = {}
        self._dialling: dict[str, trio.Lock] = {}
        self._ids = itertools.count(1)

    # -- the block that owns the connections ----------------------------------------

    async def __aenter__(self) -> Self:
        if self._context is not None:
            raise RuntimeError("this WebSocketTransport is already running")
        self._context = self._running()
        return await self._context.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._context is not None
        context, self._context = self._context, None
        return await context.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Self]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                for connection in list(self._connections.values()):
                    self._close(connection, "the transport closed")
                # Each connection now closes gracefully; whatever is still at it
                # (or still dialling) when the grace period ends is cut off.
                nursery.cancel_scope.deadline = trio.current_time() + self.close_timeout

    # -- requests -------------------------------------------------------------------

    async def request(self, address: str, data: bytes) -> bytes:
        """Send ``data`` (one MessagePack envelope) to ``address``; return the answer.

        The envelope is sent with a fresh request id of this transport's, whatever id
        it carried. Raises :class:`Unreachable` when no connection can be opened, and
        :class:`TransportError` when the request cannot be stamped or is too large,
        the connection drops before the answer comes, or none comes in ``timeout``.
        """
        _parse(address)
        nursery = self._nursery
        if nursery is None:
            raise TransportError(
                "the ws transport is not running: use `async with WebSocketTransport()`"
            )
        request_id = next(self._ids)
        payload = self._stamp(data, request_id)
        with trio.move_on_after(self.timeout):
            connection = await self._connection(nursery, address)
            socket = connection.socket
            assert socket is not None
            reply = PendingAnswer()
            connection.pending[request_id] = reply
            try:
                if connection.closed is not None:
                    raise TransportError(f"connection to {address} closed: {connection.closed}")
                await self._send(connection, socket, payload)
                await reply.done.wait()
            finally:
                del connection.pending[request_id]
            return reply.result()
        raise TransportError(f"no answer from {address} within {self.timeout} s")

    def _stamp(self, data: bytes, request_id: int) -> bytes:
        """``data`` re-encoded with ``request_id`` as its envelope's id."""
        if len(data) > self.max_message_bytes:
            raise TransportError(
                f"request is {len(data)} bytes, over the limit of {self.max_message_bytes}"
            )
        try:
            envelope = MSGPACK.decode(bytes(data))
        except ProtocolError as exc:
            raise TransportError(f"cannot send this request: {exc}") from exc
        stamped = MSGPACK.encode(envelope.body, request_id, envelope.session)
        if len(stamped) > self.max_message_bytes:
            raise TransportError(
                f"request is {len(stamped)} bytes, over the limit of {self.max_message_bytes}"
            )
        return stamped

    async def _send(
        self, connection: _Connection, socket: WebSocketConnection, data: bytes
    ) -> None:
        sent = False
        try:
            await socket.send_message(data)
            sent = True
        except ConnectionClosed as exc:
            self._close(connection, _describe(exc.reason))
            raise TransportError(
                f"connection to {connection.address} closed: {connection.closed}"
            ) from exc
        finally:
            if not sent and connection.closed is None:
                # Cancelled mid-message, the stream may hold half a frame: nothing
                # more can be sent on it.
                self._close(connection, "a request was cut off while being sent")

    async def _connection(self, nursery: trio.Nursery, address: str) -> _Connection:
        """The open connection to ``address``, dialled now if there is none."""
        lock = self._dialling.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is None:
                connection = await nursery.start(self._run_connection, address)
            return connection

    async def _run_connection(
        self, address: str, *, task_status: trio.TaskStatus[_Connection]
    ) -> None:
        """Dial ``address``, then route answers to their requests until the
        connection closes; fail whatever is still waiting when it does.

        The TCP stream is opened and closed here rather than by trio-websocket's
        ``open_websocket_url``, which leaves the socket open (to the garbage
        collector) when the peer drops the connection first.
        """
        parts = _parse(address)
        assert parts.hostname is not None
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = _Connection(address)
        self.dials += 1
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
        except (OSError, trio.TooSlowError) as exc:
            raise Unreachable(f"cannot connect to {address}: {exc!r}") from exc
        async with stream:
            try:
                await self._speak(connection, stream, parts.netloc, resource, task_status)
            except* HandshakeError as group:
                connection.closed = f"the WebSocket handshake failed: {group.exceptions[0]!r}"
            finally:
                self._close(connection, "the connection ended")
        if connection.socket is None:
            raise Unreachable(f"cannot connect to {address}: {connection.closed}")

    async def _speak(
        self,
        connection: _Connection,
        stream: trio.SocketStream,
        host: str,
        resource: str,
        task_status: trio.TaskStatus[_Connection],
    ) -> None:
        """The WebSocket part of a connection, on an open TCP stream."""
        async with trio.open_nursery() as nursery:
            socket: WebSocketConnection | None = None
            with trio.move_on_after(self.connect_timeout):
                socket = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    max_message_size=self.max_message_bytes,
                    receive_buffer_size=_RECEIVE_BYTES,
                )
            if socket is None:
                connection.closed = f"no WebSocket handshake within {self.connect_timeout} s"
                nursery.cancel_scope.cancel()
                return
            connection.socket = socket
            self._connections[connection.address] = connection
            task_status.started(connection)
            with connection.scope:
                nursery.start_soon(self._keepalive, socket, partial(self._close, connection))
                await self._route_answers(connection, socket)
            # Whoever closed, finish the closing handshake (briefly), then stop reading.
            with trio.move_on_after(self.close_timeout):
                await socket.aclose()
            nursery.cancel_scope.cancel()

    async def _route_answers(self, connection: _Connection, socket: WebSocketConnection) -> None:
        while True:
            try:
                message = await socket.get_message()
            except ConnectionClosed as exc:
                self._close(connection, _describe(exc.reason))
                return
            if isinstance(message, str):
                self._close(connection, "the peer sent a text message")
                return
            request_id = _envelope_id(message)
            reply = connection.pending.get(request_id) if request_id is not None else None
            if reply is None:
                # Normal for an answer that comes after its request timed out.
                log.debug(
                    "dropped an answer from %s: no request waits for id %s",
                    connection.address,
                    request_id,
                )
                continue
            reply.succeed(message)

    def _close(self, connection: _Connection, reason: str) -> None:
        """Take ``connection`` out of use: new requests dial again, waiting ones fail."""
        if connection.closed is None:
            connection.closed = reason
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        error = TransportError(f"connection to {connection.address} closed: {connection.closed}")
        for reply in connection.pending.values():
            reply.fail(error)
        connection.scope.cancel()

    # -- keepalive ------------------------------------------------------------------

    async def _keepalive(self, socket: WebSocketConnection, dead: Callable[[str], object]) -> None:
        """Ping every ``ping_interval``; call ``dead`` if a pong is late, and stop."""
        if math.isinf(self.ping_interval):
            return
        while True:
            await trio.sleep(self.ping_interval)
            with trio.move_on_after(self.ping_timeout) as waiting:
                try:
                    await socket.ping()
                except ConnectionClosed:
                    return
            if waiting.cancelled_caught:
                dead(f"no pong within {self.ping_timeout} s")
                return

    # -- serving --------------------------------------------------------------------

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler`` at ``ws://HOST:PORT`` until cancelled.

        Port 0 binds a free port; the bound address is reported through
        ``task_status.started``. Every binary message on an accepted connection is
        one request: the handler runs on it (up to ``max_concurrent`` at once per
        connection) and its answer goes back on the same connection. A handler that
        raises, or answers with more than ``max_message_bytes``, is answered for
        with an ``internal`` or ``too-large`` :class:`ErrorReply` carrying the
        request's id.
        """
        parts = _parse(address)
        host = parts.hostname
        assert host is not None
        if parts.port is None:
            raise TransportError(f"serving needs a port (0 for any): {address!r}")
        try:
            listeners = await trio.open_tcp_listeners(parts.port, host=host)
        except OSError as exc:
            raise TransportError(f"cannot listen at {address}: {exc}") from exc
        server = WebSocketServer(
            partial(self._serve_connection, handler),
            listeners,
            max_message_size=self.max_message_bytes,
            receive_buffer_size=_RECEIVE_BYTES,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=self.close_timeout,
        )
        port = listeners[0].socket.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started(f"{SCHEME}://{shown_host}:{port}{parts.path}")

    async def _serve_connection(self, handler: Handler, request: WebSocketRequest) -> None:
        """One accepted connection: read requests and answer each, until it closes."""
        socket = await request.accept()
        self.accepted += 1
        slots = trio.Semaphore(self.max_concurrent)
        async with trio.open_nursery() as answering, trio.open_nursery() as reading:

            def dead(reason: str) -> None:
                log.info("closing the connection from %s: %s", socket.remote, reason)
                reading.cancel_scope.cancel()

            reading.start_soon(self._keepalive, socket, dead)
            while True:
                try:
                    message = await socket.get_message()
                except ConnectionClosed:
                    break
                if isinstance(message, str):
                    await socket.aclose(_UNSUPPORTED_DATA, "binary messages only")
                    break
                await slots.acquire()
                answering.start_soon(self._answer, socket, handler, message, slots)
            reading.cancel_scope.cancel()
        # Handlers still running when the connection closes are left to finish (their
        # work may be stored entries); their answers have nowhere to go.

    async def _answer(
        self, socket: WebSocketConnection, handler: Handler, request: bytes, slots: trio.Semaphore
    ) -> None:
        try:
            try:
                answer = bytes(await handler(request))
            except Exception:
                log.exception("the handler failed on a request from %s", socket.remote)
                answer = self._refusal(request, "internal", "the handler failed")
            if len(answer) > self.max_message_bytes:
                answer = self._refusal(
                    request, "too-large", f"the answer is over {self.max_message_bytes} bytes"
                )
            try:
                await socket.send_message(answer)
            except ConnectionClosed:
                log.debug("an answer to %s found the connection closed", socket.remote)
        finally:
            slots.release()

    @staticmethod
    def _refusal(request: bytes, code: str, reason: str) -> bytes:
        return MSGPACK.encode(ErrorReply(code=code, message=reason), _envelope_id(request))
