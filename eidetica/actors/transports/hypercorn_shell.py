"""Hypercorn's per-connection HTTP machinery behind our own accept loop.

``hypercorn.trio.serve`` runs trio's ``serve_listeners``, which knows nothing of a
node's limits: it accepts every connection the process has descriptors for. So this
module does what hypercorn's ``worker_serve`` does (the application's lifespan, one
``TCPServer`` per connection, a graceful shutdown) but accepts through
:func:`~eidetica.actors.transports.accept.serve_listeners`, which admits each
connection against the node's caps and walls it off from the others.

Two of hypercorn's waits have no deadline of their own, so the stream it is given
adds them: sending to a client that never reads (hypercorn sends shielded from
cancellation) gives up after ``send_timeout``, and so the connection ends rather than
holding its answer and blocking shutdown forever.

Only HTTP/1.1 is spoken. hypercorn would switch a cleartext connection to HTTP/2 on
a prior-knowledge preface or an ``Upgrade: h2c``, and its HTTP/2 side buffers request
bodies nobody reads, keeps streams whose client never opens its window, and has no
idle deadline: none of our bounds would hold. Our peers speak HTTP/1.1 (httpx without
h2), so such a connection is simply closed.

It uses hypercorn's ``TCPServer``, ``Lifespan`` and ``WorkerContext``, which are not
documented API; ``pyproject.toml`` pins hypercorn to the minor version this was
written against.
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app

from eidetica.actors.transports.accept import serve_listeners
from eidetica.actors.transports.admission import Admission

log = logging.getLogger(__name__)


class _DeadlineStream:
    """A socket stream whose sends fail after ``send_timeout`` seconds, closing it:
    hypercorn sends shielded, so without this a client that stops reading holds the
    connection (and its answer's bytes) for ever."""

    def __init__(self, stream: trio.SocketStream, send_timeout: float) -> None:
        self._stream = stream
        self._send_timeout = send_timeout
        self.socket = stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_timeout):
            await self._stream.send_all(data)
            return
        await trio.aclose_forcefully(self._stream)
        raise trio.BrokenResourceError(f"the client read nothing for {self._send_timeout} s")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Http1Only(ProtocolWrapper):
    """hypercorn's protocol switch, switching to nothing: a connection that asks for
    HTTP/2 is closed instead."""

    async def handle(self, event: Event) -> None:
        try:
            await self.protocol.handle(event)
        except (H2ProtocolAssumedError, H2CProtocolRequiredError):
            log.info("closed a connection from %s that asked for HTTP/2", self.client)
            await self.send(Closed())


class _Http1Server(TCPServer):
    """hypercorn's ``TCPServer`` for a plain socket, with :class:`_Http1Only` as its
    protocol (its own ``run``, less the TLS part, which we never use)."""

    async def run(self) -> None:
        socket = self.stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _Http1Only(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()


async def run_hypercorn(
    app: Any,
    config: Config,
    listener: socket.socket,
    admission: Admission,
    stop: trio.Event,
    *,
    send_timeout: float,
    name: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound socket ``listener`` until ``stop`` is set, then shut
    down gracefully: stop accepting, close idle connections, and give requests in
    flight ``config.graceful_timeout`` seconds before cancelling them."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    listener.listen(config.backlog)
    listening = trio.SocketListener(trio.socket.from_stdlib_socket(listener))

    async def carry(stream: trio.SocketStream, source: str) -> None:
        bounded = _DeadlineStream(stream, send_timeout)
        state_copy = ConnectionState(state.copy())
        # Duck-typed: hypercorn reads, sends and closes through it, and finds .socket.
        await _Http1Server(wrapped, config, context, state_copy, bounded).run()  # type: ignore[arg-type]

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(
                        serve_listeners,
                        [listening],
                        carry,
                        admission,
                        name=name,
                        handler_nursery=connections,
                    )
                )
                task_status.started()
                await stop.wait()
                accepting.cancel_scope.cancel()
            await trio.aclose_forcefully(listening)
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
