"""HTTP: a quart-trio application on hypercorn serves, a pooled httpx client sends.

Every sync request is a ``POST /api/v0`` whose body is one envelope in the JSON codec,
and the answer's body is the answer's envelope. Status codes say what happened, so
that proxies, logs and ``curl`` users can tell without decoding: an error answer
(:class:`~eidetica.protocol.messages.ErrorReply`) gets the status of its code (400
for a malformed request, 401 without a session, 404 for a tree this peer may not read,
and so on), and 5xx is kept for our own faults. The body is still the envelope, so a
client decodes an error answer exactly as it does over any other transport.

Bodies are limited before they are read: a declared ``Content-Length`` over
:data:`~eidetica.protocol.limits.MAX_MESSAGE_BYTES` is refused at once with 413, and
a chunked body is cut off by quart's ``MAX_CONTENT_LENGTH`` as it arrives. The client
limits answers the same way. ``GET /health`` answers 200 while the server is up and
the node's storage answers, and 503 once it does not. A transport given a node's
:class:`~eidetica.actors.transports.base.AdminPages` answers those instead, and
``GET /``, ``/status.json``, ``/metrics`` and ``/ready`` beside them
(:mod:`eidetica.actors.admin`).

Large answers are compressed: an answer of :data:`COMPRESS_FROM` bytes or more goes
out gzipped (level 1) to a client that accepts gzip. A page of 1,024 entries shrinks
to about 0.41 of its JSON size, mostly by undoing base64; level 1 costs about 5 ms per
such page, and bigger levels gain little on signed, random-looking bytes. The client
inflates within the same limit, so a small compressed body cannot become a huge one.

The server binds its socket itself (so port 0 resolves, and an address in use is a
:class:`TransportError` with nothing left open) and hands it to hypercorn as
``fd://``. Cancelling :meth:`HttpTransport.serve` is a graceful shutdown: it stops
accepting, closes idle keep-alive connections, gives requests in flight a short
grace period, then cancels them.
"""

from __future__ import annotations

import logging
import socket
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import httpx
import msgspec
import trio
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import RequestEntityTooLarge

from eidetica.actors.transports.admission import Admission, ByteBudget, ServerLimits
from eidetica.actors.transports.base import (
    ADMIN_HEADERS,
    ADMIN_PATHS,
    AdminAnswer,
    AdminPages,
    Handler,
    Origin,
)
from eidetica.actors.transports.framing import guard
from eidetica.actors.transports.hypercorn_shell import run_hypercorn
from eidetica.actors.transports.refusals import RefusalLog
from eidetica.errors import TransportError, Unreachable
from eidetica.protocol import limits
from eidetica.protocol.codec import JSON
from eidetica.protocol.messages import ErrorReply

log = logging.getLogger(__name__)
refusals = RefusalLog(log)

SCHEME = "http"
API_PATH = "/api/v0"
HEALTH_PATH = "/health"
CONTENT_TYPE = "application/json"

STATUS_OF_CODE = {
    "malformed": 400,
    "unknown-version": 400,
    "unknown-message": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not-found": 404,
    "too-large": 413,
    "rejected": 422,
    "internal": 500,
    "busy": 503,
}
"""The HTTP status of an error answer, by its code; any other answer is 200."""

_GRACE_SECONDS = 3.0
"""How long requests in flight may run on after the server is told to stop."""

_SHUTDOWN_SECONDS = _GRACE_SECONDS + 2.0
"""How long stopping may take in all, hypercorn's own shutdown included."""

COMPRESS_FROM = 16 * 1024
"""Answers this big or bigger are gzipped for clients that accept it."""

_COMPRESS_IN_THREAD_FROM = 1024 * 1024
"""Bigger answers are gzipped on a worker thread, so the event loop goes on."""

_GZIP_WBITS = 16 + zlib.MAX_WBITS

_BACKLOG = 4096
"""Connections the kernel queues before we accept them (hypercorn's default of 100
drops honest connects while a flood is being accepted and reset)."""


class _PeekBody(msgspec.Struct):
    type: str
    code: str = ""


class _Peek(msgspec.Struct):
    """Just enough of a JSON envelope to see whether it is an error, and which."""

    v: int
    body: _PeekBody


_peek = msgspec.json.Decoder(_Peek)


def _peek_envelope(data: bytes) -> _Peek | None:
    """The version and body type of a JSON envelope; ``None`` if it is not one."""
    try:
        return _peek.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _status_of(answer: bytes) -> int:
    """The HTTP status for a handler's answer: that of its error code, else 200."""
    peek = _peek_envelope(answer)
    if peek is None:
        log.error("the handler answered something that is not a JSON envelope")
        return 500
    if peek.body.type != "error":
        return 200
    return STATUS_OF_CODE.get(peek.body.code, 500)


def _split_address(address: str) -> tuple[str, int, str]:
    """Host, port and path prefix of an ``http://HOST:PORT[/PREFIX]`` address."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise TransportError(f"not an http address: {address!r} ({exc})") from exc
    if parts.scheme != SCHEME or not parts.hostname:
        raise TransportError(f"not an http address: {address!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise TransportError(f"an http address has no query, fragment or user: {address!r}")
    return parts.hostname, 80 if port is None else port, parts.path.rstrip("/")


def _answer(body: bytes, status: int) -> TrioResponse:
    return TrioResponse(body, status=status, content_type=CONTENT_TYPE)


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS)
    return packer.compress(data) + packer.flush()


async def _compressed_answer(body: bytes, status: int) -> TrioResponse:
    """The answer, gzipped if it is big and the client accepts gzip."""
    if len(body) < COMPRESS_FROM or not request.accept_encodings["gzip"]:
        return _answer(body, status)
    if len(body) >= _COMPRESS_IN_THREAD_FROM:
        packed = await trio.to_thread.run_sync(_gzip, body)
    else:
        packed = _gzip(body)
    response = _answer(packed, status)
    response.headers["content-encoding"] = "gzip"
    response.headers["vary"] = "accept-encoding"
    return response


def _refusal(status: int, code: str, reason: str) -> TrioResponse:
    """An error answer the server gives before the handler sees the request."""
    refusals.warning(f"HTTP {status}", "refused an HTTP request (%d): %s", status, reason)
    return _answer(
        JSON.encode(ErrorReply(code=code, message=reason[: limits.MAX_TEXT_CHARS])), status
    )


class _HoldDisconnectAfterAnswer:
    """ASGI middleware that lets hypercorn close a connection it has answered early.

    When an answer goes out before the request's body was read (a 413, a 415),
    hypercorn closes the connection, and on the way tells the application the client
    disconnected. quart-trio cancels its request handling on that news, and with it
    the close hypercorn is still doing inside our ``send``: the socket stays open and
    the connection is stuck, draining the body forever and answering nothing more.
    A disconnect that comes after the whole answer was sent is therefore held back;
    quart-trio finishes the request by itself a moment later.

    It is also where a request's charge on the byte budget ends: when the application
    is done, its answer sent (or abandoned at the send deadline).
    """

    def __init__(self, app: QuartTrio) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        answered = False

        async def receive_until_answered() -> ASGIReceiveEvent:
            message = await receive()
            if answered and message["type"] == "http.disconnect":
                await trio.sleep_forever()
            return message

        async def send_noting_answer(message: ASGISendEvent) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self._app(scope, receive_until_answered, send_noting_answer)
        finally:
            charge = cast(dict[str, Any], scope).pop(_CHARGE, None)
            if charge is not None:
                charge.release()


class _OverBudget(Exception):
    """A body's next chunk does not fit in the node's byte budget."""


class _Charge:
    """What one request (its body, then its answer) has taken from the node's byte
    budget, under its source's share; released once the answer has been sent."""

    def __init__(self, budget: ByteBudget, owner: str) -> None:
        self._budget = budget
        self._owner = owner
        self.taken = 0

    def take(self, size: int) -> None:
        if not self._budget.reserve(size, self._owner):
            raise _OverBudget
        self.taken += size

    def release(self) -> None:
        self._budget.release(self.taken, self._owner)
        self.taken = 0


_CHARGE = "eidetica.charge"
"""Where a request's :class:`_Charge` waits in its ASGI scope for the answer to be sent."""


async def _read_body(charge: _Charge) -> bytes:
    """The request's body, each chunk charged as it arrives, within the message limit."""
    body = bytearray()
    async for chunk in request.body:
        if len(body) + len(chunk) > limits.MAX_MESSAGE_BYTES:
            raise RequestEntityTooLarge
        charge.take(len(chunk))
        body += chunk
    return bytes(body)


def _origin(stopping: trio.Event | None) -> Origin:
    """Who sent the request being handled: its IP, and its IP and port as the link;
    ``stopping`` is set when the server begins to stop."""
    source = request.remote_addr or "unknown"
    client = request.scope.get("client")
    link = f"{source}:{client[1]}" if isinstance(client, list | tuple) else source
    return Origin(source=source, link=f"http://{link}", stopping=stopping)


def admin_response(answer: AdminAnswer) -> TrioResponse:
    """An administrative page as an HTTP answer, with :data:`ADMIN_HEADERS`."""
    response = TrioResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in ADMIN_HEADERS.items():
        response.headers[name] = value
    return response


def _application(
    handler: Handler,
    health: Callable[[], bool] | None,
    admission: Admission,
    *,
    compress: bool,
    stopping: trio.Event | None = None,
    admin: AdminPages | None = None,
) -> QuartTrio:
    """The quart-trio application that puts ``handler`` at ``POST /api/v0``, and
    ``GET /health`` answering 200 while ``health()`` is true, 503 otherwise.

    A body is charged to the node's byte budget as it arrives (not by the length it
    declares: four requests declaring 16 MiB and sending nothing must not hold the
    budget), must arrive whole within ``message_timeout``, and holds its charge until
    it is answered; the handler is guarded, so nothing it raises escapes. Each
    request's origin carries ``stopping``, set once the server begins to stop.
    """
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.MAX_MESSAGE_BYTES
    answer_for = guard(handler, JSON)
    deadline = admission.limits.message_timeout

    @app.post(API_PATH)
    async def sync_request() -> TrioResponse:
        if request.mimetype != CONTENT_TYPE:
            return _refusal(
                415, "malformed", f"content type is {request.mimetype!r}, not {CONTENT_TYPE}"
            )
        declared = request.content_length
        if declared is not None and declared > limits.MAX_MESSAGE_BYTES:
            return _refusal(
                413, "too-large", f"body is {declared} bytes, over {limits.MAX_MESSAGE_BYTES}"
            )
        origin = _origin(stopping)
        charge = _Charge(admission.budget, origin.source)
        cast(dict[str, Any], request.scope)[_CHARGE] = charge  # released once answered
        try:
            data: bytes | None = None
            with trio.move_on_after(deadline):
                data = await _read_body(charge)
            if data is None:
                return _refusal(408, "malformed", f"the body did not arrive within {deadline} s")
            answer = await answer_for(data, origin)
            charge.take(len(answer))
        except RequestEntityTooLarge:
            return _refusal(413, "too-large", f"body is over {limits.MAX_MESSAGE_BYTES} bytes")
        except _OverBudget:
            return _refusal(503, "internal", "the node is busy: try again later")
        if not compress:
            return _answer(answer, _status_of(answer))
        return await _compressed_answer(answer, _status_of(answer))

    @app.get(HEALTH_PATH)
    async def health_check() -> TrioResponse:
        if admin is not None and (page := admin.answer(HEALTH_PATH)) is not None:
            return admin_response(page)
        if health is not None and not health():
            return _answer(msgspec.json.encode({"status": "unavailable"}), 503)
        return _answer(msgspec.json.encode({"status": "ok"}), 200)

    async def admin_page() -> TrioResponse:
        page = admin.answer(request.path) if admin is not None else None
        if page is None:
            return _answer(msgspec.json.encode({"status": "not-found"}), 404)
        return admin_response(page)

    for path in ADMIN_PATHS:
        if path != HEALTH_PATH:
            app.add_url_rule(path, f"admin {path}", admin_page, methods=["GET"])
    return app


async def _bind(address: str) -> socket.socket:
    """A socket bound to the host and port of ``address`` (port 0: any free port)."""
    host, port, prefix = _split_address(address)
    if prefix:
        raise TransportError(f"the server serves at the root, not at {prefix!r}: {address!r}")
    try:
        found = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise TransportError(f"cannot resolve {host!r} to listen at {address!r}: {exc}") from exc
    family, kind, proto, _, sockaddr = found[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(sockaddr)
    except OSError as exc:
        listener.close()
        raise TransportError(f"cannot listen at {address!r}: {exc}") from exc
    return listener


def _server_config(limits: ServerLimits) -> Config:
    """Hypercorn's settings: log only to our logger; no read waits longer than a whole
    message may take."""
    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = _GRACE_SECONDS
    config.read_timeout = int(max(1.0, limits.message_timeout))
    config.backlog = _BACKLOG
    return config


def _shown_address(listener: socket.socket) -> str:
    """The ``http://`` address a bound socket serves, its port resolved."""
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{SCHEME}://{shown}:{port}"


async def _run_server(
    shutdown: trio.CancelScope,
    *args: Any,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    **kwargs: Any,
) -> None:
    """Hypercorn, shielded so that a cancellation becomes its graceful shutdown
    (``stop``), bounded by the deadline the caller puts on ``shutdown``."""
    with shutdown:
        await run_hypercorn(*args, task_status=task_status, **kwargs)


class HttpTransport:
    """The :class:`~eidetica.actors.transports.base.Transport` for ``http://``.

    One instance holds one pooled httpx client (keep-alive connections to every peer
    it talks to), created at the first request. Close it with :meth:`aclose`, or use
    the transport as an ``async with`` block; a closed transport opens a fresh pool
    if it is used again.

    ``health`` says whether the node behind its servers is well (its storage open);
    ``GET /health`` answers 503 when it is not. ``compress=False`` asks peers for
    plain answers and sends plain ones, for networks fast enough that the bytes
    matter less than gzip's CPU (on loopback a big pull ran at 5,900-7,450 entries/s
    with gzip over three runs, against 6,745 without: within run-to-run noise).

    ``wire_sent`` and ``wire_received`` count the body bytes of its requests and
    answers as they crossed the wire (answers compressed, if they were).
    """

    scheme = SCHEME
    long_poll = True
    """A server cannot send requests back to whoever dialled it over HTTP, so a node
    that dials over it keeps a watch open instead (:mod:`eidetica.actors.watch`)."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        health: Callable[[], bool] | None = None,
        compress: bool = True,
        limits: ServerLimits | None = None,
        admission: Admission | None = None,
        admin: AdminPages | None = None,
    ) -> None:
        self.admission = admission if admission is not None else Admission(limits or ServerLimits())
        self._health = health
        self.admin = admin
        """The node's pages, served at their ``GET`` paths (set before serving)."""
        self._accept = "gzip" if compress else "identity"
        self._compress = compress
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._request_seconds = timeout
        """A bound on the whole request: httpx's timeouts restart at every read, so a
        server dribbling a byte at a time would otherwise hold a request forever."""
        self._client: httpx.AsyncClient | None = None
        self.wire_sent = 0
        self.wire_received = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections (shielded: it runs during shutdowns)."""
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def _pool(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                # Idle connections are dropped a little before hypercorn's 5 s
                # keep-alive timeout, so a request rarely meets a socket the server
                # is closing at that very moment.
                limits=httpx.Limits(keepalive_expiry=4.0),
                follow_redirects=False,
            )
        return self._client

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler`` at ``POST /api/v0`` of ``address`` until cancelled.

        ``address`` is ``http://HOST:PORT``; port 0 binds a free port, and the bound
        address is reported through ``task_status.started`` once it accepts
        connections. :class:`TransportError` if the address cannot be bound.
        Connections are admitted by :attr:`admission`; whatever one of them does ends
        it alone. Only a failure of the listening socket itself ends this call.
        """
        limits = self.admission.limits
        stop = trio.Event()
        app = _HoldDisconnectAfterAnswer(
            _application(
                handler,
                self._health,
                self.admission,
                compress=self._compress,
                stopping=stop,
                admin=self.admin,
            )
        )
        listener = await _bind(address)
        bound = _shown_address(listener)
        shutdown = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(
                    partial(
                        _run_server,
                        shutdown,
                        app,
                        _server_config(limits),
                        listener,
                        self.admission,
                        stop,
                        send_timeout=limits.message_timeout,
                        name=f"the HTTP server at {bound}",
                    )
                )
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                stop.set()
                shutdown.deadline = trio.current_time() + _SHUTDOWN_SECONDS

    async def request(self, address: str, data: bytes) -> bytes:
        """POST ``data`` to ``address`` and return the answer's envelope bytes.

        An error answer (4xx or 5xx carrying an envelope) is returned like any other:
        the caller decodes it into the error it is. :class:`Unreachable` when nothing
        accepts the connection; :class:`TransportError` on a timeout (of any one read,
        or of the whole request, ``timeout`` seconds either way), a broken
        connection, an answer over the size limit, or an error status that carries
        no envelope (a proxy's page, a framework's own 413).
        """
        _split_address(address)
        url = address.rstrip("/") + API_PATH
        if len(data) > limits.MAX_MESSAGE_BYTES:
            raise TransportError(
                f"request is {len(data)} bytes, over {limits.MAX_MESSAGE_BYTES}; not sent"
            )
        client = self._pool()
        with trio.move_on_after(self._request_seconds):
            return await self._exchange(client, address, url, data)
        raise TransportError(f"no answer from {url} within {self._request_seconds} s")

    async def _exchange(
        self, client: httpx.AsyncClient, address: str, url: str, data: bytes
    ) -> bytes:
        try:
            outgoing = client.build_request(
                "POST",
                url,
                content=data,
                headers={"content-type": CONTENT_TYPE, "accept-encoding": self._accept},
            )
            outgoing.stream = _OneChunk(data)
            response = await client.send(outgoing, stream=True)
            self.wire_sent += len(data)
            try:
                body = await _read_limited(response, url)
            finally:
                self.wire_received += response.num_bytes_downloaded
                with trio.CancelScope(shield=True):  # even at the deadline: no leak
                    await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"nobody answers at {address}: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise TransportError(f"request to {url} timed out: {exc!r}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TransportError(f"request to {url} failed: {exc!r}") from exc
        if not response.is_success and _peek_envelope(body) is None:
            raise TransportError(f"{url} answered HTTP {response.status_code} without an envelope")
        return body


async def _read_limited(response: httpx.Response, url: str) -> bytes:
    """The answer's body, inflated if it came gzipped, and refused if it is (or
    inflates to) more than the limit.

    A body whose declared length is over the limit is refused before it is read, and
    one that arrives without a declared length as soon as it passes the limit. A
    declared, gzipped body is read to its end even when it inflates past the limit
    (it is no bigger than the limit itself), inflating no further than the limit.
    """
    limit = limits.MAX_MESSAGE_BYTES
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TransportError(f"{url} answered {declared} bytes, over {limit}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise TransportError(f"{url} answered in the {encoding!r} encoding, not gzip")
    inflater = zlib.decompressobj(_GZIP_WBITS) if encoding == "gzip" else None
    body = bytearray()
    received = 0
    refusal: str | None = None
    # aiter_raw is an async generator (typed as a plain iterator): close it, so that
    # leaving early does not leave it to warn when collected.
    async with aclosing(cast(AsyncGenerator[bytes], response.aiter_raw())) as chunks:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise TransportError(f"{url} answered over {limit} bytes")
            if refusal is not None:
                continue  # drained, not kept: the body ends at its declared length
            if inflater is None:
                body += chunk
                continue
            try:
                body += inflater.decompress(chunk, limit + 1 - len(body))
            except zlib.error as exc:
                refusal = f"{url} answered a broken gzip body: {exc}"
            else:
                if len(body) > limit or inflater.unconsumed_tail:
                    refusal = f"{url} answered over {limit} bytes once inflated"
    if refusal is None and inflater is not None and not inflater.eof:
        refusal = f"{url} answered a gzip body that ends early"
    if refusal is None and inflater is not None and inflater.unused_data:
        refusal = f"{url} answered bytes after the end of its gzip body"
    if refusal is not None:
        raise TransportError(refusal)
    return bytes(body)


class _OneChunk(httpx.AsyncByteStream):
    """A request body of one chunk, iterated without an async generator.

    httpx's own body streams are async generators. When a server answers before
    reading the whole body and closes the connection, httpcore stops iterating the
    body and reads the answer; the generator, left suspended, warns when collected.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sent = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._sent = False
        return self

    async def __anext__(self) -> bytes:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        return self._data
