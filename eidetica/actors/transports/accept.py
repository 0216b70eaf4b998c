"""The accept loop every server of ours runs: admission, and a wall around each connection.

trio's own ``serve_listeners`` lets a handler's exception end the whole server, and a
server framework's accept loop knows nothing of our limits. Here each accepted
connection is first admitted (:class:`~eidetica.actors.transports.admission.Admission`:
caps in all and per source), then handled in a task of its own behind a boundary:
whatever that connection does (a reset, a socket gone before its address is read, an
exception from any layer) ends that connection alone, with one logged reason, and the
listener goes on. Only a failure of the listening socket itself ends
:func:`serve_listeners`, for the server actor to restart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import trio

from eidetica.actors.transports.admission import Admission
from eidetica.actors.transports.refusals import RefusalLog

log = logging.getLogger(__name__)
refusals = RefusalLog(log)

ConnectionHandler = Callable[[trio.SocketStream, str], Awaitable[None]]
"""Carries one admitted connection (its stream and source address) until it ends."""

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() failures that mean "not now" rather than "this listener is broken"."""

_PAUSE_WHEN_FULL = 0.1
"""Seconds to stop accepting when the process runs out of descriptors or memory."""

_VANISHED = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
"""What a connection's own socket raises when its peer has gone."""


async def serve_listeners(
    listeners: Sequence[trio.SocketListener],
    handle: ConnectionHandler,
    admission: Admission,
    *,
    name: str,
    handler_nursery: trio.Nursery | None = None,
) -> None:
    """Accept on every listener until cancelled, handing each admitted connection to
    ``handle`` in a task of its own, in ``handler_nursery`` if given (so that a
    server can stop accepting and still let its connections finish), else in this
    call's own. ``name`` names the server in log lines."""
    async with trio.open_nursery() as nursery:
        connections = nursery if handler_nursery is None else handler_nursery
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handle, admission, name, connections)


async def _accept_loop(
    listener: trio.SocketListener,
    handle: ConnectionHandler,
    admission: Admission,
    name: str,
    connections: trio.Nursery,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_DESCRIPTORS:
                raise
            log.warning("%s cannot accept for now: %s", name, exc)
            await trio.sleep(_PAUSE_WHEN_FULL)
            continue
        source = source_of(stream)
        if source is None:
            reset(stream)  # gone before we could even ask who it was
            continue
        refusal = admission.admit(source)
        if refusal is not None:
            refusals.warning("connection caps", "%s refused %s: %s", name, source, refusal)
            reset(stream)
            continue
        connections.start_soon(_carry, stream, source, handle, admission, name)


async def _carry(
    stream: trio.SocketStream,
    source: str,
    handle: ConnectionHandler,
    admission: Admission,
    name: str,
) -> None:
    """One connection's boundary: nothing it raises (but cancellation) goes further."""
    try:
        await handle(stream, source)
    except _VANISHED as exc:
        log.info("%s: a connection from %s ended: %r", name, source, exc)
    except Exception as exc:
        # One line, throttled: a peer that can provoke an error must not fill the log
        # with tracebacks (the traceback is there at debug level).
        kind = f"connection failed: {type(exc).__name__}"
        refusals.warning(
            kind, "%s: a connection from %s failed and was closed: %r", name, source, exc
        )
        log.debug("the failure of a connection from %s", source, exc_info=True)
    finally:
        admission.release(source)
        await trio.aclose_forcefully(stream)


def source_of(stream: trio.SocketStream) -> str | None:
    """The remote address of a connection (its IP, without the port); ``None`` when the
    socket is already gone, as it is when a client connects and resets at once."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None
    if isinstance(address, tuple):
        return str(address[0])
    return str(address) or "local"


def reset(stream: trio.SocketStream) -> None:
    """Close a connection at once, with a TCP reset: no buffers kept, no FIN_WAIT."""
    with contextlib.suppress(OSError):  # already gone: closing is all that is left
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()
