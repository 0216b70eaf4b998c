"""The control socket: how the ``eidetica`` commands reach a node that is running.

A running node owns its data directory (an ``flock`` on the database's lock file),
so ``eidetica put`` or ``eidetica sync`` cannot open the directory while
``eidetica serve`` runs. Instead the node listens on a Unix socket in the directory,
``control.sock``, made readable and writable by its owner only: whoever may use the
socket may read the directory (and its device key) anyway. A command that finds a
node answering there hands it the command, and the node runs it on its live
instance and sync engine and sends back the exit code and the output.

One request per connection: a JSON line (:class:`ControlRequest`), answered by a
JSON line (:class:`ControlAnswer`), then the node closes the connection.

The file mode is the first guard; where the kernel tells who is at the other end of
the socket (``SO_PEERCRED``, Linux), both ends also check it
(:func:`~eidetica.actors.control_client.is_trusted`): the node runs no command for
another user, should the socket or its directory ever be left wider, and a command
is not handed to a node another user runs.

This module is the node's end. The command's end, with what both share, is
:mod:`eidetica.actors.control_client`, which imports no trio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio

from eidetica.actors import control_client
from eidetica.actors.control_client import (
    ControlAnswer,
    ControlHandler,
    ControlRequest,
    is_trusted,
    peer_uid,
    short_name,
    socket_path,
)
from eidetica.errors import TransportError

__all__ = [
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "READ_SECONDS",
    "ControlAnswer",
    "ControlHandler",
    "ControlRequest",
    "ask",
    "serve",
    "socket_path",
]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""More than a command line can carry (the kernel's limit is 2 MiB of arguments)."""
READ_SECONDS = 10.0
"""How long a client may take to send its request."""
MAX_CLIENTS = 32
"""Commands run at once; a client beyond them is told the node is busy."""

_decode_request = msgspec.json.Decoder(ControlRequest)


async def serve(
    path: Path,
    handler: ControlHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer commands at ``path`` until cancelled, then remove the socket file.

    The caller owns the data directory (it holds the SQLite lock), so a socket file
    already there is a stale one from a node that stopped without cleaning up.
    """
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _remove(path)
    mask = os.umask(0o177)  # the file is born owner-only: no window to connect in
    try:
        with short_name(path) as where:
            await listener.bind(where)
    except OSError as exc:
        listener.close()
        raise TransportError(f"cannot listen at {path}: {exc}") from exc
    finally:
        os.umask(mask)
    try:
        listener.listen()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                trio.serve_listeners, _answerer(handler), [trio.SocketListener(listener)]
            )
            task_status.started()
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    """Remove the socket file (a local unlink: no need for a worker thread)."""
    path.unlink(missing_ok=True)


def _answerer(handler: ControlHandler) -> Callable[[trio.SocketStream], Awaitable[None]]:
    clients = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal clients
        async with stream:
            try:
                uid = peer_uid(stream.socket)
            except OSError as exc:
                log.warning("refused a control connection whose user is unknown: %s", exc)
                return
            if uid is not None and not is_trusted(uid):
                log.warning("refused a control connection from uid %d, not this node's user", uid)
                reply = ControlAnswer(code=1, err="eidetica: the node runs as another user\n")
            elif clients >= MAX_CLIENTS:
                reply = ControlAnswer(code=1, err="eidetica: the node is busy; try again\n")
            else:
                clients += 1
                try:
                    reply = await _answer_one(stream, handler)
                finally:
                    clients -= 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(msgspec.json.encode(reply) + b"\n")

    return answer


async def _answer_one(stream: trio.SocketStream, handler: ControlHandler) -> ControlAnswer:
    try:
        with trio.fail_after(READ_SECONDS):
            request = _decode_request.decode(await _read_line(stream))
    except (msgspec.DecodeError, ValueError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        reason = (
            f"no request within {READ_SECONDS} s" if isinstance(exc, trio.TooSlowError) else exc
        )
        log.warning("refused a control request: %s", reason)
        return ControlAnswer(code=2, err=f"eidetica: bad control request: {reason}\n")
    return await handler(request.command)


async def _read_line(stream: trio.SocketStream, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """Bytes up to the first newline (which ends the request), or to the end."""
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError(f"request over {limit} bytes")
    return bytes(data.split(b"\n", 1)[0])


async def ask(path: Path, command: dict[str, Any]) -> ControlAnswer | None:
    """Have the node running at ``path`` run ``command``; ``None`` if no node answers
    there (no socket file, or a stale one). The blocking client
    (:func:`control_client.ask`), in a worker thread."""
    return await trio.to_thread.run_sync(
        partial(control_client.ask, path, command), abandon_on_cancel=True
    )
