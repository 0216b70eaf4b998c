"""One-shot replies: how a command's sender gets its answer, or its exception."""

from __future__ import annotations

import contextlib
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A single answer, sent once by the actor that handled the command.

    An exception travels back as the exception it was, raised again in the caller.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[bool, object]](1)

    def set(self, value: T) -> None:
        """Answer with ``value`` (only the first answer counts)."""
        self._put((True, value))

    def fail(self, error: BaseException) -> None:
        """Answer with an exception, to be raised in the caller."""
        self._put((False, error))

    def _put(self, outcome: tuple[bool, object]) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._send.send_nowait(outcome)  # only the first answer counts
        self._send.close()

    async def wait(self) -> T:
        """The answer, or the exception it carried."""
        try:
            ok, value = await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError("the actor ended without answering") from None
        if ok:
            return value  # type: ignore[return-value]
        assert isinstance(value, BaseException)
        raise value
