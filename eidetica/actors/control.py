"""The control socket: how the ``eidetica`` commands reach a node that is running.

A running node owns its data directory (SQLite is opened with an exclusive lock),
so ``eidetica put`` or ``eidetica sync`` cannot open the directory while
``eidetica serve`` runs. Instead the node listens on a Unix socket in the directory,
``control.sock``, made readable and writable by its owner only: whoever may use the
socket may read the directory (and its device key) anyway. A command that finds a
node answering there hands it the command, and the node runs it on its live
instance and sync engine and sends back the exit code and the output.

One request per connection: a JSON line (:class:`ControlRequest`), answered by a
JSON line (:class:`ControlAnswer`), then the node closes the connection.

The file mode is the first guard; where the kernel tells who is at the other end of
the socket (``SO_PEERCRED``, Linux), both ends also check it (:func:`_is_trusted`): the
node runs no command for another user, should the socket or its directory ever be
left wider, and a command is not handed to a node another user runs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from eidetica.errors import TransportError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""More than a command line can carry (the kernel's limit is 2 MiB of arguments)."""
READ_SECONDS = 10.0
"""How long a client may take to send its request."""
MAX_CLIENTS = 32
"""Commands run at once; a client beyond them is told the node is busy."""
_MAX_SOCKET_PATH = 100
"""Bytes of a socket path that surely fit ``sockaddr_un`` (108 on Linux, less
elsewhere); a longer path is reached through a descriptor of its directory."""
_NO_NODE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.ENAMETOOLONG)
"""Errors that mean nobody serves commands at a socket path."""
_PEERCRED: int | None = getattr(socket, "SO_PEERCRED", None)
"""The socket option that names the process at the other end (Linux); None elsewhere."""
_UCRED = struct.Struct("3i")
"""What ``SO_PEERCRED`` reads: the peer's pid, uid and gid."""


class ControlRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A command, as the parsed arguments of the ``eidetica`` command line."""

    command: dict[str, Any]


class ControlAnswer(msgspec.Struct, frozen=True):
    """What running the command printed, and its exit code."""

    code: int
    out: str = ""
    err: str = ""


ControlHandler = Callable[[dict[str, Any]], Awaitable[ControlAnswer]]

_decode_request = msgspec.json.Decoder(ControlRequest)
_decode_answer = msgspec.json.Decoder(ControlAnswer)


def socket_path(data: str | os.PathLike[str]) -> Path:
    return Path(data) / SOCKET_NAME


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
        with _short(path) as where:
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


@contextmanager
def _short(path: Path) -> Iterator[str]:
    """A name for the socket file ``path`` short enough to bind or connect to: the
    path itself, or (Linux) the same file through an open descriptor of its folder."""
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH or not os.path.isdir("/proc/self/fd"):
        yield os.fspath(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def _remove(path: Path) -> None:
    """Remove the socket file (a local unlink: no need for a worker thread)."""
    path.unlink(missing_ok=True)


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The user id of the process at the other end of a connected Unix socket: for a
    client, whoever called ``connect``; for the node, whoever called ``listen``. None
    where the platform cannot say (no ``SO_PEERCRED``)."""
    if _PEERCRED is None:
        return None
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _PEERCRED, _UCRED.size))
    return int(uid)


def _is_trusted(uid: int) -> bool:
    """Whether a process of user ``uid`` may use this node's control socket, or serve
    this user's commands: this process's own (effective) user, or root. Root is let in
    because it can read the data directory, device key included, anyway; anyone else
    could not, and must not reach the trees through the node instead."""
    return uid in (os.geteuid(), 0)


def _answerer(handler: ControlHandler) -> Callable[[trio.SocketStream], Awaitable[None]]:
    clients = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal clients
        async with stream:
            try:
                uid = _peer_uid(stream.socket)
            except OSError as exc:
                log.warning("refused a control connection whose user is unknown: %s", exc)
                return
            if uid is not None and not _is_trusted(uid):
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
    there (no socket file, or a stale one)."""
    try:
        with _short(path) as where:
            stream = await trio.open_unix_socket(where)
    except OSError as exc:
        if exc.errno in _NO_NODE:
            return None
        raise TransportError(f"cannot reach the node at {path}: {exc}") from exc
    async with stream:
        try:
            uid = _peer_uid(stream.socket)
        except OSError as exc:
            raise TransportError(f"cannot tell who runs the node at {path}: {exc}") from exc
        if uid is not None and not _is_trusted(uid):
            raise TransportError(
                f"the node at {path} runs as uid {uid}, not this user: not handing it the command"
            )
        # A node that refuses a request answers and closes before reading it all:
        # the answer is still there to read.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(msgspec.json.encode(ControlRequest(command)) + b"\n")
        data = bytearray()
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some():
                data += chunk
    try:
        return _decode_answer.decode(bytes(data).strip())
    except msgspec.DecodeError as exc:
        raise TransportError(f"the node at {path} gave no answer ({exc})") from exc
