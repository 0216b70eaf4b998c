"""The client side of the protocol: a handshake, then requests under its session."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from eidetica.actors.transports.base import Transport
from eidetica.errors import RemoteError, UnknownMessage
from eidetica.protocol.codec import Codec
from eidetica.protocol.handshake import Initiator
from eidetica.protocol.messages import (
    Ack,
    ErrorReply,
    HandshakeDone,
    HandshakeReply,
    Message,
    SendEntries,
    SyncRequest,
    SyncResponse,
)
from eidetica.protocol.reconcile import SyncRound
from eidetica.storage.instance import Instance
from eidetica.storage.treeview import TreeView

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one sync of one tree did."""

    tree: str
    round_trips: int
    received: int
    complete: bool
    stored: tuple[str, ...]
    """Ids of the entries this side stored from the peer, parents first."""
    tips: tuple[str, ...]
    """This side's tips when the round ended: with ``complete``, the peer's too."""


class Link:
    """Requests to one peer at one address, over one transport."""

    def __init__(self, transport: Transport, address: str, codec: Codec) -> None:
        self.transport = transport
        self.address = address
        self._codec = codec
        self.session: bytes | None = None
        self.peer_key: str | None = None

    async def call(self, message: Message, expect: type[M]) -> M:
        """Send ``message``; return the answer if it is an ``expect``, raise otherwise."""
        data = await self.transport.request(
            self.address, self._codec.encode(message, session=self.session)
        )
        answer = self._codec.decode(data).body
        if isinstance(answer, ErrorReply):
            raise RemoteError(answer.code, answer.message)
        if not isinstance(answer, expect):
            raise UnknownMessage(f"expected {expect.__name__}, got {type(answer).__name__}")
        return answer

    async def handshake(
        self,
        instance: Instance,
        *,
        expected_key: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> str:
        """Prove keys both ways; return the peer's proven key."""
        initiator = Initiator(instance.device_key, now=wall_clock(), expected_key=expected_key)
        reply = await self.call(initiator.start(), HandshakeReply)
        done = await self.call(initiator.receive_reply(reply), HandshakeDone)
        self.peer_key = initiator.receive_done(done)
        self.session = done.session
        return self.peer_key

    async def sync_tree(
        self, instance: Instance, tree: str, *, common: tuple[str, ...] = ()
    ) -> RoundResult:
        """One full two-way sync of ``tree`` with the peer."""
        round_ = SyncRound(TreeView(instance.backend, tree), tree, common=common)
        message: SyncRequest | SendEntries | None = round_.first()
        stored: list[str] = []
        while message is not None:
            expect: type[SyncResponse] | type[Ack] = (
                SyncResponse if isinstance(message, SyncRequest) else Ack
            )
            answer = await self.call(message, expect)
            receipt = await instance.receive(tree, answer.entries, source=self.peer_key)
            stored += receipt.stored
            message = round_.next(answer, receipt.missing)
        tips = tuple(instance.backend.tips(tree))
        return RoundResult(
            tree, round_.round_trips, len(stored), round_.complete, tuple(stored), tips
        )
