"""An in-memory network, so actor tests run deterministically and in virtual time.

The sim transport is a transport of its own, not a mock: a request's bytes really go
to the handler served at the address, in that server's own nursery, and the handler's
bytes really come back. Nothing but ``bytes`` crosses, so a serialization bug cannot
hide behind a shared object.

A :class:`SimNetwork` joins the servers and callers that use it, and owns the fault
controls tests need: partitions, lost requests, latency with jitter (which reorders
concurrent requests), duplicated deliveries and timeouts. Every random choice comes
from the network's own seeded ``random.Random`` and every wait from ``trio.sleep``,
so under ``trio.testing.MockClock`` a faulty run takes no real time and repeats
exactly. Addresses are ``sim://NAME``; ``sim://NAME`` resolves on
:data:`DEFAULT_NETWORK` unless a transport is given a network of its own.
"""

from __future__ import annotations

import itertools
import random

import trio

from eidetica.actors.transports.base import Handler, Origin, PendingAnswer
from eidetica.errors import TransportError, Unreachable

SCHEME = "sim"
_PREFIX = "sim://"


def _address_name(address: str) -> str:
    """The node name in ``sim://NAME``; empty when the address asks for a fresh one."""
    if not address.startswith(_PREFIX):
        raise TransportError(f"not a sim address: {address!r}")
    name = address[len(_PREFIX) :]
    if "/" in name:
        raise TransportError(f"a sim address is sim://NAME, with no path: {address!r}")
    return name


def _node_name(name: str) -> str:
    """A fault rule's node name; ``sim://NAME`` is accepted too, for convenience."""
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def _check_probability(probability: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"a probability is between 0 and 1, not {probability}")


class _Server:
    """One served name: its handler, the nursery its handlers run in, and the
    requests it has not answered yet (failed if it stops serving)."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.nursery: trio.Nursery | None = None
        self.pending: set[PendingAnswer] = set()


class SimNetwork:
    """The in-process network: which names are served, and the faults in force.

    Fault controls apply to every request on this network from the moment they are
    set. ``delivered`` counts requests handed to a handler (a duplicate copy is
    counted in ``duplicated`` instead), ``dropped`` counts requests lost on the way.
    """

    def __init__(self, seed: int = 0, timeout: float = 10.0) -> None:
        self.timeout = timeout
        """How long a caller waits for an answer, latency included, before giving up."""
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        self._random = random.Random(seed)
        self._servers: dict[str, _Server] = {}
        self._partitions: set[frozenset[str]] = set()
        self._drop_probability = 0.0
        self._drop_next = 0
        self._latency = 0.0
        self._jitter = 0.0
        self._duplicate_probability = 0.0
        self._fresh = itertools.count(1)

    # -- fault controls -------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        """Cut the link between nodes ``a`` and ``b``: requests either way are
        :class:`Unreachable` until healed."""
        self._partitions.add(frozenset((_node_name(a), _node_name(b))))

    def heal(self, a: str, b: str) -> None:
        """Restore the link between ``a`` and ``b`` (a no-op if it was not cut)."""
        self._partitions.discard(frozenset((_node_name(a), _node_name(b))))

    def heal_all(self) -> None:
        """Restore every cut link."""
        self._partitions.clear()

    def drop(self, probability: float) -> None:
        """Lose each request with ``probability``; the caller finds out only when its
        timeout runs out, as over a real network. ``0`` turns losses off."""
        _check_probability(probability)
        self._drop_probability = probability

    def drop_next(self, count: int) -> None:
        """Lose exactly the next ``count`` requests, whatever the drop probability."""
        if count < 0:
            raise ValueError(f"cannot drop a negative number of requests: {count}")
        self._drop_next = count

    def delay(self, seconds: float, jitter: float = 0.0) -> None:
        """Make each round trip take ``seconds + uniform(0, jitter)``: half on the
        way out, half on the way back. Jitter lets concurrent requests overtake each
        other. ``delay(0)`` makes the network instant again."""
        if seconds < 0 or jitter < 0:
            raise ValueError(f"latency cannot be negative: {seconds} + {jitter}")
        self._latency = seconds
        self._jitter = jitter

    def duplicate(self, probability: float) -> None:
        """Deliver each request twice with ``probability``: the handler runs on the
        same bytes twice and the caller gets the first answer, to test idempotence."""
        _check_probability(probability)
        self._duplicate_probability = probability

    # -- serving --------------------------------------------------------------------

    def fresh_name(self, prefix: str = "node") -> str:
        """A name nobody on this network serves, like a port-0 bind picks a port."""
        while True:
            name = f"{prefix}-{next(self._fresh)}"
            if name not in self._servers:
                return name

    def _register(self, name: str, handler: Handler) -> _Server:
        if not name:
            name = self.fresh_name()
        if name in self._servers:
            raise TransportError(f"{_PREFIX}{name} is already served")
        server = _Server(name, handler)
        self._servers[name] = server
        return server

    def _unregister(self, server: _Server) -> None:
        if self._servers.get(server.name) is server:
            del self._servers[server.name]
        for reply in server.pending:
            reply.fail(Unreachable(f"{_PREFIX}{server.name} stopped serving"))
        server.pending.clear()

    def _reachable(self, caller: str, name: str) -> _Server:
        """The server at ``name`` as seen from ``caller``, or :class:`Unreachable`."""
        server = self._servers.get(name)
        if server is None or server.nursery is None:
            raise Unreachable(f"nobody serves {_PREFIX}{name}")
        if frozenset((caller, name)) in self._partitions:
            raise Unreachable(f"{caller} is partitioned from {_PREFIX}{name}")
        return server

    async def _deliver(
        self, server: _Server, data: bytes, origin: Origin, reply: PendingAnswer, twice: bool
    ) -> None:
        """Hand one request to the handler; a duplicated one arrives again once the
        first copy is answered, like a retransmission, so "the caller gets the first
        answer" does not depend on how trio happens to schedule the two."""
        await self._invoke(server, data, origin, reply)
        if twice:
            await self._invoke(server, data, origin, None)

    async def _invoke(
        self, server: _Server, data: bytes, origin: Origin, reply: PendingAnswer | None
    ) -> None:
        """Run the handler on one copy; its answer or failure goes to ``reply``
        (``None`` for a duplicate copy, whose outcome nobody hears)."""
        try:
            answer = await server.handler(data, origin)
            if not isinstance(answer, bytes | bytearray | memoryview):
                raise TypeError(f"handler answered {type(answer).__name__}, not bytes")
            copied = bytes(answer)
        except Exception as exc:
            if reply is not None:
                reply.fail(TransportError(f"handler at {_PREFIX}{server.name} failed: {exc!r}"))
            return
        if reply is not None:
            reply.succeed(copied)

    async def _request(self, caller: str, address: str, data: bytes) -> bytes:
        """Carry one request from ``caller`` to ``address`` through the faults in force."""
        name = _address_name(address)
        payload = bytes(data)
        self._reachable(caller, name)
        # Every random choice is drawn here, before the first checkpoint, so the
        # sequence of draws follows the order requests were made, whatever order
        # trio later runs the tasks in.
        if self._drop_next > 0:
            self._drop_next -= 1
            lost = True
        else:
            lost = self._drop_probability > 0 and self._random.random() < self._drop_probability
        latency = self._latency
        if self._jitter > 0:
            latency += self._random.uniform(0.0, self._jitter)
        twice = (
            self._duplicate_probability > 0 and self._random.random() < self._duplicate_probability
        )
        timeout = self.timeout
        if lost:
            self.dropped += 1
            await trio.sleep(timeout)
            raise TransportError(f"request to {address} lost")
        with trio.move_on_after(timeout):
            await trio.sleep(latency / 2)
            server = self._reachable(caller, name)
            assert server.nursery is not None
            reply = PendingAnswer()
            server.pending.add(reply)
            self.delivered += 1
            if twice:
                self.duplicated += 1
            origin = Origin(source=caller, link=f"{_PREFIX}{caller}")
            server.nursery.start_soon(self._deliver, server, payload, origin, reply, twice)
            try:
                await reply.done.wait()
            finally:
                server.pending.discard(reply)
            await trio.sleep(latency / 2)
            return reply.result()
        raise TransportError(f"request to {address} timed out after {timeout} s")


DEFAULT_NETWORK = SimNetwork()
"""Where ``sim://NAME`` resolves when a transport is given no network of its own."""


class SimTransport:
    """The :class:`~eidetica.actors.transports.base.Transport` for ``sim://``.

    ``name`` is who this transport's requests come from, for partitions. It defaults
    to a fresh name; a test that also serves at ``sim://NAME`` passes that same name,
    so that a partition cuts the node off in both directions.
    """

    scheme = SCHEME

    def __init__(self, network: SimNetwork | None = None, name: str | None = None) -> None:
        self.network = DEFAULT_NETWORK if network is None else network
        self.name = self.network.fresh_name("client") if name is None else _node_name(name)

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler`` at ``address`` until cancelled, then free the name.

        ``sim://`` (an empty name) binds a fresh name, reported through
        ``task_status.started`` as the full address. Handlers run in this task's
        nursery, so cancelling the server cancels the requests it is still handling;
        their callers get :class:`Unreachable`.
        """
        server = self.network._register(_address_name(address), handler)
        try:
            async with trio.open_nursery() as nursery:
                server.nursery = nursery
                try:
                    task_status.started(f"{_PREFIX}{server.name}")
                    await trio.sleep_forever()
                finally:
                    self.network._unregister(server)
        finally:
            self.network._unregister(server)

    async def request(self, address: str, data: bytes) -> bytes:
        """Send ``data`` to ``address`` and return the answer's bytes.

        Raises :class:`Unreachable` when nobody serves the address or it is
        partitioned from this transport's name, and :class:`TransportError` when the
        request is lost, times out, or the handler fails.
        """
        return await self.network._request(self.name, address, data)
