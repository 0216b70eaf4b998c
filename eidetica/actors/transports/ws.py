"""The WebSocket transport: one long-lived two-way link per peer, requests matched by id.

A node that talks to a peer often should not pay a TCP and HTTP handshake per
request, should notice quickly when the peer is gone, and should be able to push to
a peer that cannot be dialled (behind NAT, or not listening at all). So a caller
keeps one WebSocket connection per address, dialled on the first request and kept
open, and *either* end sends requests over it: the dialling node answers the
requests its peer sends back with the handler given to :meth:`attach`, and the
serving node reaches the dialler at the link's reply address (``ws-in://N``), which
:data:`~eidetica.actors.transports.base.reply_address` hands to the handler.

Every binary message holds one MessagePack envelope. Answers are told from requests
by the message type (:data:`~eidetica.protocol.messages.ANSWERS`), and matched to
their request by the envelope's ``id``: the transport stamps every request with a
fresh id of its own (callers need not set one), and handlers answer with the id of
the request they answer, as :meth:`~eidetica.actors.service.SyncService.handle`
does. Any number of requests travel at once, both ways, answered in any order.

Both ends ping every ``ping_interval``; a connection whose pong does not come back
within ``ping_timeout`` is closed, its waiting requests fail with
:class:`TransportError`, the ``on_closed`` callback hears of it, and the next
request to that address dials again. Redialling a lost peer with backoff is the
supervisor's business (it hears ``on_closed``), not the transport's.

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
from contextlib import asynccontextmanager
from functools import partial
from typing import Self
from urllib.parse import SplitResult, urlsplit

import trio
from trio_websocket import CloseReason, ConnectionClosed, HandshakeError

from eidetica.actors.transports import plainget
from eidetica.actors.transports.accept import serve_listeners
from eidetica.actors.transports.admission import Admission, ServerLimits
from eidetica.actors.transports.base import (
    AdminAnswer,
    AdminPages,
    Handler,
    LinkClosedCallback,
    Origin,
    PendingAnswer,
    RunsInBlock,
)
from eidetica.actors.transports.framing import guard, peek, refusal
from eidetica.actors.transports.refusals import RefusalLog
from eidetica.actors.transports.wssocket import BoundedSocket
from eidetica.errors import ProtocolError, TransportError, Unreachable, first_leaf
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.limits import MAX_MESSAGE_BYTES
from eidetica.protocol.messages import HandshakeDone

log = logging.getLogger(__name__)
refusals = RefusalLog(log)

SCHEME = "ws"
INBOUND_SCHEME = "ws-in"
"""Addresses of this scheme name links peers opened to us: ``ws-in://7``."""

_RECEIVE_BYTES = 64 * 1024
"""How much one read from the socket takes; trio-websocket's 4 KiB default would
make a 16 MiB message cost four thousand reads."""

_POLICY_VIOLATION = 1008
"""The close code for a link that broke a rule of ours (no handshake in time, a
message too slow)."""

_RULE_BREAKER_LINGER = 1.0
"""Seconds a link closed for breaking a rule may take to answer our close frame."""

_PROVEN = HandshakeDone.__struct_config__.tag
"""The answer that completes a handshake: a link that carried one is no stranger's."""


def _parse(address: str) -> SplitResult:
    """The parts of a ``ws://HOST[:PORT][/PATH]`` address, or :class:`TransportError`."""
    try:
        parts = urlsplit(address)
    except ValueError as exc:
        raise TransportError(f"not a ws address: {address!r} ({exc})") from exc
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
    """One open link, dialled or accepted: its socket, the requests of ours waiting
    on it, and the scope that closes it."""

    def __init__(self, address: str, source: str, *, inbound: bool = False) -> None:
        self.address = address
        """How this node sends requests over the link: the dialled ``ws://`` address,
        or the ``ws-in://N`` of an accepted link."""
        self.source = source
        """The peer's network address (its host, for a link we dialled)."""
        self.socket: BoundedSocket | None = None
        self.proven = trio.Event()
        """Set once a handshake completed over the link, either way."""
        self.inbound = inbound
        """A peer opened it to us (so it is a stranger's until it proves a key)."""
        self.opened = trio.current_time()
        self.close_code = 1000
        """The code its close frame will carry."""
        self.pending: dict[int, PendingAnswer] = {}
        self.closed: str | None = None
        """Why the connection closed, once it has."""
        self.scope = trio.CancelScope()
        """Cancelling it ends the connection's reading and starts a graceful close."""


class WebSocketTransport(RunsInBlock):
    """The :class:`~eidetica.actors.transports.base.Transport` for ``ws://``, and a
    :class:`~eidetica.actors.transports.base.TwoWay` one.

    ``timeout`` bounds one request, dialling included; ``connect_timeout`` the
    opening handshake of a connection and ``close_timeout`` its closing one.
    ``ping_interval`` and ``ping_timeout`` are the keepalive (``math.inf`` turns it
    off). ``max_message_bytes`` bounds a message either way: a bigger request is
    refused before it is sent, and a peer that sends a bigger message has its
    connection closed with code 1009. Each end runs at most ``max_concurrent``
    handlers per connection at once, and stops reading that connection until one
    finishes.

    ``admission`` (shared with the node's other servers; by default one of this
    transport's own, with ``limits``) caps accepted connections in all and per source,
    and its byte budget bounds the message bytes all links hold at once, dialled
    ones included. An accepted link that has not completed a handshake within
    ``limits.handshake_timeout`` (its upgrade included) is closed, and so is any link
    on which one message takes longer than ``limits.message_timeout`` to arrive.
    Whatever one link does ends that link only: a dialled link's failure fails its
    requests, never the transport.

    ``dials`` counts connections this transport opened, ``accepted`` the ones its
    servers accepted.
    """

    scheme = SCHEME
    reply_scheme = INBOUND_SCHEME

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_concurrent: int = 16,
        limits: ServerLimits | None = None,
        admission: Admission | None = None,
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
        if admission is None:
            admission = Admission(limits or ServerLimits())
        self.admission = admission
        self.limits = admission.limits
        self.dials = 0
        self.accepted = 0
        self.admin: AdminPages | None = None
        """The node's pages, answered to plain ``GET`` requests (set before serving)."""
        self._nursery: trio.Nursery | None = None
        self._connections: dict[str, _Connection] = {}
        self._dialling: dict[str, trio.Lock] = {}
        self._ids = itertools.count(1)
        self._inbound = itertools.count(1)
        self._handler: Handler | None = None
        self._on_closed: LinkClosedCallback | None = None
        self._changes = trio.lowlevel.ParkingLot()
        self.link_version = 0
        """Counts links opened and closed, for :meth:`link_changed`."""

    # -- the block that owns the connections ----------------------------------------

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

    # -- two-way links --------------------------------------------------------------

    def attach(self, handler: Handler, on_closed: LinkClosedCallback) -> None:
        """Answer requests peers send over links this node dialled with ``handler``;
        tell ``on_closed(address, reason)`` whenever an open link closes."""
        self._handler = guard(handler, MSGPACK, max_answer=self.max_message_bytes)
        self._on_closed = on_closed

    def detach(self) -> None:
        """Refuse requests on dialled links again, and stop telling of closures."""
        self._handler = None
        self._on_closed = None

    def close(self, address: str) -> None:
        """Close the open link at ``address``, if there is one (gracefully)."""
        connection = self._connections.get(address)
        if connection is not None:
            self._close(connection, "closed by this node")

    def is_open(self, address: str) -> bool:
        return address in self._connections

    def links(self) -> list[str]:
        """The addresses of the open links, dialled and accepted."""
        return sorted(self._connections)

    async def link_changed(self, since: int) -> None:
        """Wait until a link has opened or closed since ``link_version`` was ``since``."""
        while self.link_version <= since:
            await self._changes.park()

    # -- requests -------------------------------------------------------------------

    async def request(self, address: str, data: bytes) -> bytes:
        """Send ``data`` (one MessagePack envelope) to ``address``; return the answer.

        ``address`` is a ``ws://`` address, dialled if no link to it is open, or the
        ``ws-in://`` address of a link a peer opened to us, which is never dialled.
        The envelope is sent with a fresh request id of this transport's, whatever id
        it carried. Raises :class:`Unreachable` when no connection can be opened, and
        :class:`TransportError` when the request cannot be stamped or is too large,
        the link is closed or drops before the answer comes, or none comes in
        ``timeout``.
        """
        inbound = address.startswith(f"{INBOUND_SCHEME}://")
        if not inbound:
            _parse(address)
        request_id = next(self._ids)
        payload = self._stamp(data, request_id)
        with trio.move_on_after(self.timeout):
            connection = self._connections.get(address) if inbound else await self._dial(address)
            if connection is None:
                raise TransportError(f"the link at {address} has closed")
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
        """``data`` re-encoded with ``request_id`` as its envelope's id; its session and
        MAC go as they came (the MAC does not cover the id)."""
        if len(data) > self.max_message_bytes:
            raise TransportError(
                f"request is {len(data)} bytes, over the limit of {self.max_message_bytes}"
            )
        try:
            envelope = MSGPACK.decode(bytes(data))
        except ProtocolError as exc:
            raise TransportError(f"cannot send this request: {exc}") from exc
        stamped = MSGPACK.encode(envelope.body, request_id, envelope.session, envelope.mac)
        if len(stamped) > self.max_message_bytes:
            raise TransportError(
                f"request is {len(stamped)} bytes, over the limit of {self.max_message_bytes}"
            )
        return stamped

    async def _send(self, connection: _Connection, socket: BoundedSocket, data: bytes) -> None:
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

    async def _dial(self, address: str) -> _Connection:
        """The open connection to ``address``, dialled now if there is none."""
        nursery = self._nursery
        if nursery is None:
            raise TransportError(
                "the ws transport is not running: use `async with WebSocketTransport()`"
            )
        lock = self._dialling.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is None:
                connection = await nursery.start(self._run_connection, address)
            return connection

    async def _run_connection(
        self, address: str, *, task_status: trio.TaskStatus[_Connection]
    ) -> None:
        """Dial ``address``, then carry the link until it closes; fail whatever is
        still waiting when it does.

        A failure before the link opens is the caller's :class:`Unreachable`; after
        it opened, whatever the peer does (hostile bytes, a reset mid-answer) ends this
        link alone, with one logged reason, and never the transport's nursery.

        The TCP stream is opened and closed here rather than by trio-websocket's
        ``open_websocket_url``, which leaves the socket open (to the garbage
        collector) when the peer drops the connection first.
        """
        parts = _parse(address)
        assert parts.hostname is not None
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = _Connection(address, parts.hostname)
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
            except* Exception as group:
                if connection.socket is None:
                    connection.closed = f"the connection failed: {group.exceptions[0]!r}"
                else:
                    log.warning("link %s failed: %r", address, group.exceptions[0])
                    self._close(connection, f"the link failed: {group.exceptions[0]!r}")
            finally:
                self._close(connection, "the connection ended")
                if connection.socket is not None:
                    connection.socket.release_all()
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
        """The WebSocket part of a dialled connection, on an open TCP stream."""
        async with trio.open_nursery() as nursery:
            socket = self._socket(
                stream, client=True, owner=connection.source, host=host, path=resource
            )
            with trio.move_on_after(self.connect_timeout) as opening:
                await socket.open_client(nursery)
            if opening.cancelled_caught:
                connection.closed = f"no WebSocket handshake within {self.connect_timeout} s"
                socket.release_all()
                nursery.cancel_scope.cancel()
                return
            connection.socket = socket
            self._opened(connection)
            task_status.started(connection)
            await self._converse(connection, self._answer_on_dialled)
            nursery.cancel_scope.cancel()

    def _socket(
        self, stream: trio.abc.Stream, *, client: bool, owner: str, **options: str
    ) -> BoundedSocket:
        return BoundedSocket(
            stream,
            client=client,
            owner=owner,
            budget=self.admission.budget,
            max_message_size=self.max_message_bytes,
            receive_buffer_size=_RECEIVE_BYTES,
            **options,
        )

    async def _answer_on_dialled(self, request: bytes, origin: Origin) -> bytes:
        """A request the peer sent back over a link we dialled: the attached handler's."""
        handler = self._handler
        if handler is None:
            reason = "this node takes no requests on links it dialled"
            return refusal(MSGPACK, request, "unknown-message", reason)
        return await handler(request, origin)

    # -- one link, either way -------------------------------------------------------

    def _opened(self, connection: _Connection) -> None:
        self._connections[connection.address] = connection
        self.link_version += 1
        self._changes.unpark_all()

    async def _converse(self, connection: _Connection, handler: Handler) -> None:
        """Read the link until it closes: answers go to the requests waiting for them,
        requests to ``handler`` (whose answers go back on the link); then close it
        gracefully. Handlers still running when the link closes are left to finish
        (their work may be stored entries); their answers have nowhere to go."""
        socket = connection.socket
        assert socket is not None
        slots = trio.Semaphore(self.max_concurrent)
        async with trio.open_nursery() as answering:
            with connection.scope:
                async with trio.open_nursery() as reading:
                    reading.start_soon(self._keepalive, socket, partial(self._close, connection))
                    reading.start_soon(self._message_deadline, connection, socket)
                    if connection.inbound:
                        reading.start_soon(self._handshake_deadline, connection)
                    await self._read(connection, socket, handler, answering, slots)
                    reading.cancel_scope.cancel()
            # Whoever closed, finish the closing handshake, briefly; a link closed for
            # breaking a rule gets a second at most, not a slot held for close_timeout.
            wait = self.close_timeout if connection.close_code == 1000 else _RULE_BREAKER_LINGER
            with trio.move_on_after(min(wait, self.close_timeout)):
                await socket.aclose(connection.close_code, connection.closed)

    async def _read(
        self,
        connection: _Connection,
        socket: BoundedSocket,
        handler: Handler,
        answering: trio.Nursery,
        slots: trio.Semaphore,
    ) -> None:
        while True:
            try:
                message = await socket.get_message()
            except ConnectionClosed as exc:
                self._close(connection, _describe(exc.reason))
                return
            assert isinstance(message, bytes), "BoundedSocket refuses text at its first fragment"
            seen = peek(MSGPACK, message)
            if not seen.is_answer:
                await slots.acquire()
                answering.start_soon(self._answer, connection, handler, message, slots)
                continue
            socket.settle(message)
            reply = connection.pending.get(seen.id) if seen.id is not None else None
            if reply is None:
                # Normal for an answer that comes after its request timed out.
                log.debug(
                    "dropped an answer from %s: no request waits for id %s",
                    connection.address,
                    seen.id,
                )
                continue
            if seen.kind == _PROVEN:  # our own handshake, completed: not a stranger's link
                connection.proven.set()
            reply.succeed(message)

    async def _answer(
        self, connection: _Connection, handler: Handler, request: bytes, slots: trio.Semaphore
    ) -> None:
        """Answer one request on the link; ``handler`` is guarded, so it never raises."""
        socket = connection.socket
        assert socket is not None
        origin = Origin(source=connection.source, link=connection.address, reply=connection.address)
        charged = 0
        try:
            answer = await handler(request, origin)
            if socket.charge(len(answer)):
                charged = len(answer)
            else:
                answer = refusal(MSGPACK, request, "internal", "the node is busy: try again later")
            if peek(MSGPACK, answer).kind == _PROVEN:
                connection.proven.set()
            await self._send_answer(connection, socket, answer)
        finally:
            socket.discharge(charged)
            socket.settle(request)
            slots.release()

    async def _send_answer(
        self, connection: _Connection, socket: BoundedSocket, answer: bytes
    ) -> None:
        """Send one answer, within ``message_timeout``: a peer that does not read its
        answers loses the link, rather than holding them (and their bytes)."""
        timeout = self.limits.message_timeout
        try:
            with trio.move_on_after(timeout) as sending:
                await socket.send_message(answer)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("an answer on %s found the connection closed", connection.address)
            return
        if sending.cancelled_caught:
            reason = f"the peer read no answer for {timeout} s"
            self._abandon(connection, reason, kind="send deadline")

    def _abandon(
        self, connection: _Connection, reason: str, code: int = _POLICY_VIOLATION, *, kind: str
    ) -> None:
        """Close a link that broke a rule, saying which in its close frame and the log."""
        refusals.warning(
            kind, "closing link %s from %s: %s", connection.address, connection.source, reason
        )
        connection.close_code = code
        self._close(connection, reason)

    async def _handshake_deadline(self, connection: _Connection) -> None:
        """Close an accepted link that has not proven a key within ``handshake_timeout``
        of being accepted: a stranger may not hold a link for nothing."""
        timeout = self.limits.handshake_timeout
        with trio.move_on_at(connection.opened + timeout):
            await connection.proven.wait()
            return
        self._abandon(connection, f"no handshake within {timeout} s", kind="handshake deadline")

    async def _message_deadline(self, connection: _Connection, socket: BoundedSocket) -> None:
        """Close the link if one message takes longer than ``message_timeout`` to arrive."""
        timeout = self.limits.message_timeout
        while True:
            began = await socket.message_started()
            await trio.sleep_until(began + timeout)
            if socket.message_began == began:
                reason = f"a message took more than {timeout} s to arrive"
                self._abandon(connection, reason, kind="message deadline")
                return

    def _close(self, connection: _Connection, reason: str) -> None:
        """Take ``connection`` out of use: new requests dial again (or fail, for an
        accepted link), waiting ones fail, and ``on_closed`` hears of it."""
        if connection.closed is None:
            connection.closed = reason
        was_open = self._connections.get(connection.address) is connection
        if was_open:
            del self._connections[connection.address]
        error = TransportError(f"connection to {connection.address} closed: {connection.closed}")
        for reply in connection.pending.values():
            reply.fail(error)
        connection.scope.cancel()
        if was_open:
            self.link_version += 1
            self._changes.unpark_all()
            log.info("link %s closed: %s", connection.address, connection.closed)
            if self._on_closed is not None:
                self._on_closed(connection.address, connection.closed)

    # -- keepalive ------------------------------------------------------------------

    async def _keepalive(self, socket: BoundedSocket, dead: Callable[[str], object]) -> None:
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
        ``task_status.started``. Every request on an accepted link is answered by
        the handler (up to ``max_concurrent`` at once per link), told the link's
        ``ws-in://`` address as its origin's ``reply``, at which this node can send
        the peer requests back. A handler that raises, or answers with more than
        ``max_message_bytes``, is answered for with an ``internal`` or ``too-large``
        :class:`ErrorReply` carrying the request's id. Connections are admitted by
        :attr:`admission`; whatever one of them does ends it alone. Only a failure
        of the listening socket itself ends this call.
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
        port = listeners[0].socket.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        bound = f"{SCHEME}://{shown_host}:{port}{parts.path}"
        answer = guard(handler, MSGPACK, max_answer=self.max_message_bytes)
        try:
            task_status.started(bound)
            await serve_listeners(
                listeners,
                partial(self._serve_connection, answer),
                self.admission,
                name=f"the WebSocket server at {bound}",
            )
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _serve_connection(
        self, handler: Handler, stream: trio.SocketStream, source: str
    ) -> None:
        """One accepted connection: its upgrade (within the handshake deadline), then
        the link until it closes; or, for a plain ``GET`` of a page of the node's, that
        page (:mod:`.plainget`)."""
        upgrade_by = trio.current_time() + self.limits.handshake_timeout
        head = b""
        with trio.move_on_at(upgrade_by):
            head = await plainget.read_head(stream)
        path = plainget.admin_path(head)
        if path is not None:
            await self._answer_plain(stream, path)
            return
        connection = _Connection(f"{INBOUND_SCHEME}://{next(self._inbound)}", source, inbound=True)
        socket = self._socket(plainget.Replayed(stream, head), client=False, owner=source)
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_at(upgrade_by):
                    await socket.open_server(nursery)
                    connection.socket = socket
                if connection.socket is None:
                    log.info("a client from %s did not finish its WebSocket upgrade", source)
                    nursery.cancel_scope.cancel()
                    return
                self.accepted += 1
                log.debug("link %s accepted from %s", connection.address, source)
                self._opened(connection)
                try:
                    await self._converse(connection, handler)
                finally:
                    self._close(connection, "the connection ended")
                nursery.cancel_scope.cancel()
        except* ConnectionClosed as group:
            reason = getattr(first_leaf(group), "reason", None)
            log.info("a client from %s left: %s", source, _describe(reason))
        finally:
            socket.release_all()

    async def _answer_plain(self, stream: trio.SocketStream, path: str) -> None:
        """Answer a plain ``GET`` of one of the node's pages, and close."""
        admin = self.admin
        page = admin.answer(path) if admin is not None else None
        if page is None:
            page = AdminAnswer(404, "application/json", b'{"status":"not-found"}')
        with trio.move_on_after(self.limits.message_timeout):
            await stream.send_all(plainget.response(page))
