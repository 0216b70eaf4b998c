"""The one small interface every transport implements.

A transport moves bytes: a request's encoded envelope to a peer, the answer's back.
It knows nothing of messages, sessions or trees; the handler it serves does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from eidetica.errors import TransportError

Handler = Callable[[bytes], Awaitable[bytes]]
"""Turns one request's bytes into its answer's bytes. Never raises for bad input:
bad input gets an error answer."""


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
