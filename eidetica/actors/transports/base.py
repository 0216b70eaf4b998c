"""The one small interface every transport implements.

A transport moves bytes: a request's encoded envelope to a peer, the answer's back.
It knows nothing of messages, sessions or trees; the handler it serves does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

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
