"""The server actor: one per listening address, serving until its scope is cancelled.

A client can end its own connection, never the server: each connection is walled
off by the transport. If the server fails for a reason of its own (its listening
socket broke), it is started again at the same address with backoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from eidetica.actors.service import SyncService
from eidetica.actors.transports.base import Transport
from eidetica.errors import EideticaError, first_leaf

log = logging.getLogger("eidetica.actors.supervisor")


@dataclass
class ServerHealth:
    """How one server actor has fared: written by it, read for status."""

    restarts: int = 0
    last_error: str | None = None
    listening: bool = False
    """Serving now: false before it first listens and while it waits to restart."""


_SERVER_BACKOFF_MAX = 30.0
"""The longest wait before a failed server is started again, in seconds."""

_SERVER_STEADY = 60.0
"""A server that ran this long before failing is restarted after the shortest wait."""


async def serve(
    transport: Transport,
    address: str,
    service: SyncService,
    health: ServerHealth,
    *,
    task_status: trio.TaskStatus[tuple[str, trio.CancelScope]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The server actor: serve one address until its scope is cancelled.

    A failure to listen at first comes out as the single typed error it is, not
    wrapped in a group. Once serving, the server never stops for a client (each
    connection is walled off by the transport); if it fails for a reason of its own
    (its listening socket broke), it is started again at the same bound address,
    after 1 s, doubling up to 30 s while it keeps failing, and each failure is
    logged and counted in ``health``.
    """
    listen_at: str | None = None
    wait = 1.0
    with trio.CancelScope() as scope:
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    at = listen_at or address
                    bound = await nursery.start(transport.serve, at, service.handle)
                    health.listening = True
                    if listen_at is None:
                        task_status.started((bound, scope))
                    listen_at = bound
            except BaseExceptionGroup as group:
                if listen_at is None:
                    matched, rest = group.split(EideticaError)
                    if matched is None or rest is not None:
                        raise
                    raise first_leaf(matched) from group
                if group.split(Exception)[1] is not None:
                    raise  # cancellation (or worse) goes on up
                health.last_error = repr(first_leaf(group))
            else:
                health.last_error = "it stopped serving"
            health.listening = False
            if trio.current_time() - began >= _SERVER_STEADY:
                wait = 1.0
            health.restarts += 1
            log.error(
                "the server at %s failed (%s); starting it again in %.0f s",
                listen_at,
                health.last_error,
                wait,
            )
            await trio.sleep(wait)
            wait = min(wait * 2, _SERVER_BACKOFF_MAX)
