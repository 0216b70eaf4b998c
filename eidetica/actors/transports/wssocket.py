"""trio-websocket's connection, held to a node's bounds on message bytes and time.

trio-websocket gathers the fragments of a message in memory until the message is
whole, with no bound but the message size and no deadline at all: a peer that starts
a 15 MiB message and sends the rest at a byte a second holds 15 MiB for as long as it
likes, and twenty such peers hold 300 MB. :class:`BoundedSocket` charges every
fragment to the node's :class:`~eidetica.actors.transports.admission.ByteBudget` as it
arrives, under its peer's share, and keeps the charge until whoever reads the message
calls :meth:`settle` (after handling it); answers are charged while they are sent
(:meth:`charge`), so the budget covers messages arriving, being handled and being
answered. A fragment that does not fit closes the connection with code 1013 ("try
again later"). It also notes when each message began, so the transport can cut
a message that takes longer than its deadline (:meth:`message_started`). A text
message is refused (1003) at its first fragment, never buffered.

It hooks trio-websocket's message and ping handling (``_handle_message_event``,
``_handle_ping_event``: no pong once a close is under way) and opens
connections the way its own ``wrap_*_stream`` functions do; ``pyproject.toml`` pins
trio-websocket to the minor version this was written against.
"""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import CloseReason, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from eidetica.actors.transports.admission import ByteBudget

TRY_AGAIN_LATER = 1013
"""The close code for a connection whose message would overrun the node's budget."""

UNSUPPORTED_DATA = 1003
"""The close code for a text message: the protocol speaks binary only."""


class BoundedSocket(WebSocketConnection):
    """A WebSocket connection whose message bytes are charged to ``budget``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client: bool,
        budget: ByteBudget,
        owner: str,
        **options: Any,
    ) -> None:
        kind = ConnectionType.CLIENT if client else ConnectionType.SERVER
        super().__init__(stream, WSConnection(kind), **options)
        self._budget = budget
        self._owner = owner
        """Whose share of the budget this connection's bytes count against (its peer's
        address)."""
        self._arriving = 0
        """Bytes of the message now arriving, charged to the budget."""
        self._delivered = 0
        """Bytes of whole messages handed on and not settled yet, charged too."""
        self.message_began: float | None = None
        """When the first fragment of the message now arriving came (trio time)."""
        self._message_event = trio.Event()

    # -- opening, as trio-websocket's wrap_client_stream and wrap_server_stream do ----

    async def open_client(self, nursery: trio.Nursery) -> None:
        """Run the reader in ``nursery`` and wait for the server to accept."""
        nursery.start_soon(self._reader_task)
        await self._open_handshake.wait()

    async def open_server(self, nursery: trio.Nursery) -> None:
        """Run the reader in ``nursery``, wait for the client's upgrade and accept it."""
        nursery.start_soon(self._reader_task)
        request = await self._get_request()
        await request.accept()

    # -- the budget -----------------------------------------------------------------

    def settle(self, message: bytes | str) -> None:
        """``message`` (read with ``get_message``) has been dealt with: release its bytes."""
        size = min(len(message), self._delivered)
        self._delivered -= size
        self._budget.release(size, self._owner)

    def charge(self, size: int) -> bool:
        """Take ``size`` bytes for an answer about to be sent; whether they fit."""
        return self._budget.reserve(size, self._owner)

    def discharge(self, size: int) -> None:
        """An answer :meth:`charge` took bytes for has been sent, or given up."""
        self._budget.release(size, self._owner)

    def release_all(self) -> None:
        """The connection is over: release what arrived and was not settled (answers
        are discharged by whoever charged them, when they finish; idempotent)."""
        self._budget.release(self._arriving + self._delivered, self._owner)
        self._arriving = self._delivered = 0

    async def message_started(self) -> float:
        """Wait until a message is arriving; when it began."""
        while self.message_began is None:
            await self._message_event.wait()
        return self.message_began

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if isinstance(event, TextMessage):  # refused at its first fragment, unbuffered
            await self._refuse(UNSUPPORTED_DATA, "binary messages only")
            return
        size = len(event.data)
        if not self._budget.reserve(size, self._owner):
            reason = f"the node is busy: {size} more bytes would pass its buffer limit"
            await self._refuse(TRY_AGAIN_LATER, reason)
            return
        if self.message_began is None:
            self.message_began = trio.current_time()
            self._message_event.set()
            self._message_event = trio.Event()
        self._arriving += size
        await super()._handle_message_event(event)
        if event.message_finished or not self._reader_running:
            # Delivered whole, or dropped as too big: either way it arrives no more.
            if self._reader_running:
                self._delivered += self._arriving
            else:
                self._budget.release(self._arriving, self._owner)
            self._arriving = 0
            self.message_began = None

    async def _refuse(self, code: int, reason: str) -> None:
        """Close the connection for the message now arriving, dropping what it had."""
        self._budget.release(self._arriving, self._owner)
        self._arriving = 0
        self.message_began = None
        self._message_parts = []
        self._message_size = 0
        if self._wsproto.state is ConnectionState.OPEN:  # not if a close is under way
            self._close_reason = CloseReason(code, reason)
            await self._send(CloseConnection(code=code, reason=reason))
        await self._recv_channel.aclose()
        self._reader_running = False

    async def _handle_ping_event(self, event: Ping) -> None:
        """Answer a ping only while the connection is open: a pong after our close
        frame is a protocol error of ours, which a peer could provoke at will."""
        if self._wsproto.state is ConnectionState.OPEN:
            await super()._handle_ping_event(event)
