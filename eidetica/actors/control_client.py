"""The command's end of the control socket (:mod:`eidetica.actors.control`), and
what both ends share: the socket's place, its two messages, and who may use it.

It is plain blocking Python on the standard library and msgspec, with no trio:
``eidetica put`` on a directory a node runs on hands the command over and prints the
answer, and importing trio, the storage or the sync engine would take most of the
time that costs.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import msgspec

from eidetica.errors import TransportError

SOCKET_NAME = "control.sock"
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

_decode_answer = msgspec.json.Decoder(ControlAnswer)


def socket_path(data: str | os.PathLike[str]) -> Path:
    return Path(data) / SOCKET_NAME


@contextmanager
def short_name(path: Path) -> Iterator[str]:
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


class _Socket(Protocol):
    """A connected socket, blocking (``socket``) or trio's."""

    def getsockopt(self, level: int, option: int, size: int, /) -> bytes: ...


def peer_uid(sock: _Socket) -> int | None:
    """The user id of the process at the other end of a connected Unix socket: for a
    client, whoever called ``connect``; for the node, whoever called ``listen``. None
    where the platform cannot say (no ``SO_PEERCRED``)."""
    if _PEERCRED is None:
        return None
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _PEERCRED, _UCRED.size))
    return int(uid)


def is_trusted(uid: int) -> bool:
    """Whether a process of user ``uid`` may use this node's control socket, or serve
    this user's commands: this process's own (effective) user, or root. Root is let in
    because it can read the data directory, device key included, anyway; anyone else
    could not, and must not reach the trees through the node instead."""
    return uid in (os.geteuid(), 0)


def ask(path: Path, command: dict[str, Any]) -> ControlAnswer | None:
    """Have the node running at ``path`` run ``command`` and wait for its answer;
    ``None`` if no node answers there (no socket file, or a stale one). Blocking: it
    is for a command-line process; ``control.ask`` runs it in a thread for trio."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            with short_name(path) as where:
                sock.connect(where)
        except OSError as exc:
            if exc.errno in _NO_NODE:
                return None
            raise TransportError(f"cannot reach the node at {path}: {exc}") from exc
        try:
            uid = peer_uid(sock)
        except OSError as exc:
            raise TransportError(f"cannot tell who runs the node at {path}: {exc}") from exc
        if uid is not None and not is_trusted(uid):
            raise TransportError(
                f"the node at {path} runs as uid {uid}, not this user: not handing it the command"
            )
        # A node that refuses a request answers and closes before reading it all:
        # the answer is still there to read.
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(msgspec.json.encode(ControlRequest(command)) + b"\n")
        data = bytearray()
        with suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    try:
        return _decode_answer.decode(bytes(data).strip())
    except msgspec.DecodeError as exc:
        raise TransportError(f"the node at {path} gave no answer ({exc})") from exc
