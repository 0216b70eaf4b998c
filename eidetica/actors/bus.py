"""The event bus: one node's events, fanned out to whoever listens, never waiting.

Actors publish :mod:`eidetica.events` here with a plain call; it never blocks and
never fails, so a slow consumer cannot slow the engine. Two kinds of consumer:

- *listeners*, plain callables run at once for every event (metrics counters, the
  status page's recent syncs): they must be quick and must not raise; one that raises
  is logged and removed;
- *subscriptions* (``sync.events()``), each a bounded queue read as an async
  iterator. A full queue keeps what it holds and marks the gap with one
  :class:`~eidetica.events.Missed` that counts what fell into it, so the order of what
  is read is the order of what happened, and memory stays bounded whatever the
  consumer does.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType

import trio

from eidetica.events import Event, Missed

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]

DEFAULT_BUFFER = 1024
"""Events a subscription holds before it marks a gap."""


class Subscription:
    """Events from the moment it was made, until the engine stops or it is closed.

    Use as ``async for event in sync.events():`` (it ends when the engine stops), or in
    ``async with sync.events() as events:`` to stop listening on leaving the block.
    """

    def __init__(self, bus: Bus, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("a subscription must hold at least one event")
        self._bus = bus
        self._buffer = buffer
        self._queue: deque[Event] = deque()
        self._ready = trio.Event()
        self.closed = False

    def offer(self, event: Event) -> None:
        """Take an event, or count it into the gap at the end if full (no wait)."""
        if self.closed:
            return
        if len(self._queue) < self._buffer:
            self._queue.append(event)
        elif isinstance(self._queue[-1], Missed):
            self._queue[-1] = Missed(self._queue[-1].count + 1)
        else:
            self._queue.append(Missed(1))  # the one item past the cap: the gap's mark
        self._ready.set()

    def close(self) -> None:
        """Stop taking events; iteration ends once those held are read."""
        self.closed = True
        self._bus.unsubscribe(self)
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            await self._ready.wait()
            self._ready = trio.Event()
        return self._queue.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def aclose(self) -> None:
        """Same as :meth:`close`, for ``contextlib.aclosing`` and friends."""
        self.close()


class Bus:
    """Fans events out to listeners and subscriptions; see the module docstring."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        """Held weakly: a subscription its reader dropped (a ``break`` out of ``async
        for`` with no ``async with``) goes with its last reference, never filling up
        here for the life of the node."""
        self.published = 0
        self.closed = False

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every consumer now. Never blocks, never raises."""
        self.published += 1
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed; removed", listener)
                self.unlisten(listener)
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    def listen(self, listener: Listener) -> None:
        """Run ``listener`` for every event from now on."""
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        """Stop running ``listener`` (no error if it was not listening)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def subscribe(self, buffer: int = DEFAULT_BUFFER) -> Subscription:
        """A new subscription; one made after the bus closed is already ended."""
        subscription = Subscription(self, buffer)
        if self.closed:
            subscription.closed = True
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """The engine stopped: every subscription ends once read."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
