"""The one small interface every transport implements.

A transport moves bytes: a request's encoded envelope to a peer, the answer's back.
It knows nothing of messages, sessions or trees; the handler it serves does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import NamedTuple, Protocol, Self, runtime_checkable

import trio

from eidetica.actors.transports.framing import Handler, Origin
from eidetica.errors import TransportError

__all__ = [
    "Handler",
    "LinkClosedCallback",
    "Origin",
    "PendingAnswer",
    "RunsInBlock",
    "Transport",
    "TwoWay",
]


class Transport(Protocol):
    """Serves a handler at an address, and sends requests to addresses."""

    scheme: str
    """The address scheme this transport handles: ``"sim"``, ``"http"``, ``"ws"``."""

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler`` at ``address`` until cancelled; report the bound address
        (port 0 resolved) through ``task_status.started`` once really listening."""
        ...

    async def request(self, address: str, data: bytes) -> bytes:
        """Send one request and return the answer; :class:`TransportError` on failure."""
        ...


LinkClosedCallback = Callable[[str, str], None]
"""Told (address, reason) when a two-way link closes."""


@runtime_checkable
class TwoWay(Protocol):
    """A transport whose links carry requests both ways: a node that dialled a peer
    answers the peer's requests on that link, and a server can send requests back
    to a client over the link the client opened (at an address of ``reply_scheme``)."""

    reply_scheme: str
    """The scheme of the addresses that name links a peer opened to us."""

    def attach(self, handler: Handler, on_closed: LinkClosedCallback) -> None:
        """Answer requests that arrive on links this node dialled with ``handler``,
        and tell ``on_closed`` whenever a link closes."""
        ...

    def detach(self) -> None:
        """Undo :meth:`attach`: requests on dialled links are refused again."""
        ...

    def close(self, address: str) -> None:
        """Close the link at ``address`` (dialled or not), if one is open."""
        ...

    def is_open(self, address: str) -> bool:
        """Whether a link at ``address`` is open now."""
        ...


class PendingAnswer:
    """The one-shot answer to one request: bytes, or the error the caller will get
    (shared by the transports that match answers to requests themselves)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self._answer: bytes | None = None
        self._error: TransportError | None = None

    def succeed(self, answer: bytes) -> None:
        if not self.done.is_set():
            self._answer = answer
            self.done.set()

    def fail(self, error: TransportError) -> None:
        if not self.done.is_set():
            self._error = error
            self.done.set()

    def result(self) -> bytes:
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


class RunsInBlock:
    """A transport whose links live in an ``async with`` block of its own (its nursery
    answers requests on dialled links): ``__aenter__`` runs :meth:`_running`, once at a
    time."""

    _context: AbstractAsyncContextManager[Self] | None = None

    def _running(self) -> AbstractAsyncContextManager[Self]:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._context is not None:
            raise RuntimeError(f"this {type(self).__name__} is already running")
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


class AdminAnswer(NamedTuple):
    """What an administrative ``GET`` is answered with."""

    status: int
    content_type: str
    body: bytes


class AdminPages(Protocol):
    """A node's read-only pages for people and monitors (``eidetica.actors.admin``):
    ``/``, ``/status.json``, ``/metrics``, ``/health`` and ``/ready``. A server
    answers a plain ``GET`` of one of :data:`ADMIN_PATHS` with :meth:`answer`."""

    def answer(self, path: str) -> AdminAnswer | None:
        """The answer for ``path``; None if it is not one of the pages."""
        ...


ADMIN_PATHS = ("/", "/status.json", "/metrics", "/health", "/ready")
"""The paths :class:`AdminPages` answers."""

ADMIN_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline';"
    " style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
}
"""Headers of every administrative answer, on either transport: never cached, never
sniffed, never framed, and the status page may load nothing from anywhere and fetch
only from its own origin."""
