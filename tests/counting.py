"""A transport that counts what passes through another: for tests and benches that
measure round trips and bytes on the wire."""

from __future__ import annotations

from typing import Any

import trio

from eidetica.actors.transports.base import Handler, Transport


class Counting:
    """Counts the requests sent through ``inner`` and the bytes of each request and
    of its answer. Anything else (a two-way transport's ``attach``, ``reply_scheme``,
    ...) is ``inner``'s, but ``long_poll`` when given: False keeps an HTTP client from
    watching, so no long poll brings entries before the sync does."""

    def __init__(self, inner: Transport, *, long_poll: bool | None = None) -> None:
        self.scheme = inner.scheme
        self._inner = inner
        self.requests = 0
        self.sent = 0
        self.received = 0
        if long_poll is not None:
            self.long_poll = long_poll

    @property
    def both_ways(self) -> int:
        """Bytes both ways so far."""
        return self.sent + self.received

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self._inner.serve(address, handler, task_status=task_status)

    async def request(self, address: str, data: bytes) -> bytes:
        answer = await self._inner.request(address, data)
        self.requests += 1
        self.sent += len(data)
        self.received += len(answer)
        return answer
