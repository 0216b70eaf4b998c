"""Plain ``GET`` requests of a node's pages on a WebSocket listener.

A node that listens only on WebSocket still owes its operator ``/health``,
``/ready``, ``/metrics`` and the status page. A WebSocket connection opens with an
HTTP request, so the listener reads that request's head first (within the
handshake deadline, at most :data:`MAX_HEAD_BYTES`): a ``GET`` of one of
:data:`~eidetica.actors.transports.base.ADMIN_PATHS` that asks for no upgrade is
answered here, with ``Connection: close``, and never reaches trio-websocket; any
other head is handed on, byte for byte, to the WebSocket handshake through
:class:`Replayed`.
"""

from __future__ import annotations

from http import HTTPStatus

import trio

from eidetica.actors.transports.base import ADMIN_HEADERS, ADMIN_PATHS, AdminAnswer

MAX_HEAD_BYTES = 8 * 1024
"""Bytes of a request head read before deciding; a longer head goes to the upgrade,
which refuses it as trio-websocket does any other."""

_END = b"\r\n\r\n"


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """What the client sent up to the end of its request head (and whatever came in the
    same reads), stopping at :data:`MAX_HEAD_BYTES` or the end of the stream."""
    data = bytearray()
    while _END not in data and len(data) < MAX_HEAD_BYTES:
        chunk = await stream.receive_some(MAX_HEAD_BYTES)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def admin_path(head: bytes) -> str | None:
    """The page a head asks for, if it is a plain ``GET`` of one; else None."""
    if _END not in head:
        return None
    lines = head.split(_END, 1)[0].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
        return None
    path = parts[1].split(b"?", 1)[0].decode("ascii", "replace")
    if path not in ADMIN_PATHS:
        return None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return None
    return path


def response(answer: AdminAnswer) -> bytes:
    """``answer`` as a whole HTTP/1.1 response that closes the connection."""
    reason = HTTPStatus(answer.status).phrase
    headers = {
        "content-type": answer.content_type,
        "content-length": str(len(answer.body)),
        "connection": "close",
        **ADMIN_HEADERS,
    }
    head = f"HTTP/1.1 {answer.status} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return head.encode("ascii") + b"\r\n" + answer.body


class Replayed(trio.abc.Stream):
    """A socket stream that first gives back ``head`` (bytes already read from it),
    then reads on: what the WebSocket handshake is handed after :func:`read_head`."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            chunk, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
