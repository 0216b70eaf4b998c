"""An in-memory network, so actor tests run deterministically and in virtual time.

The sim transport is a transport of its own, not a mock: a request's bytes really go
to the handler served at the address, in that server's own nursery, and the handler's
bytes really come back. Nothing but ``bytes`` crosses, so a serialization bug cannot
hide behind a shared object.

Like the WebSocket transport it is **two-way**: the first request a transport sends
to ``sim://NAME`` opens a link to that server, and later requests go over it. The
served handler is told the link's reply address, ``sim-in://N``, as its origin's
``reply``; the serving node sends requests back to the dialler there, and the
dialler answers them with the handler given to :meth:`SimTransport.attach`. Either
end may close a link, and both ends' ``on_closed`` callbacks hear of it. Answering
on links it dialled needs a nursery, so a transport does it only while running as
``async with SimTransport(...)``; outside such a block it still dials and serves,
and requests sent back to it fail.

A :class:`SimNetwork` joins the servers and callers that use it, and owns the fault
controls tests need: partitions, lost requests, latency with jitter (which reorders
concurrent requests), duplicated deliveries, timeouts, and cut links. They apply to
requests either way over a link alike. Every random choice comes from the network's
own seeded ``random.Random``, drawn in the order requests are made, and every wait
from trio's clock, so under ``trio.testing.MockClock`` a faulty run takes no real
time and repeats exactly, as long as its requests are made in the same order (trio
runs tasks that wake at the same moment in an order of its own). Addresses are
``sim://NAME``; ``sim://NAME`` resolves on :data:`DEFAULT_NETWORK` unless a
transport is given a network of its own.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Self

import trio

from eidetica.actors.transports.base import (
    Handler,
    LinkClosedCallback,
    Origin,
    PendingAnswer,
    RunsInBlock,
)
from eidetica.errors import TransportError, Unreachable

log = logging.getLogger(__name__)

SCHEME = "sim"
INBOUND_SCHEME = "sim-in"
"""Addresses of this scheme name links other nodes opened to us: ``sim-in://7``."""
_PREFIX = "sim://"
_INBOUND_PREFIX = f"{INBOUND_SCHEME}://"


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
    """One served name: its handler, the transport serving it (which owns the links
    dialled to it), and the nursery its handlers run in."""

    def __init__(self, name: str, handler: Handler, owner: SimTransport) -> None:
        self.name = name
        self.handler = handler
        self.owner = owner
        self.nursery: trio.Nursery | None = None


@dataclass(frozen=True, slots=True)
class _Receiver:
    """The end a request arrives at: its handler, what to call it in errors, and the
    origin the handler is told."""

    handler: Handler
    where: str
    origin: Origin


class _LinkState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class _Link:
    """One link between a dialling transport and a served name.

    Its lifecycle is ``OPEN`` (from the dial) to ``CLOSED`` (either end closed it,
    the server stopped, the dialler's transport stopped, a partition or
    :meth:`SimNetwork.disconnect` cut it); a closed link never opens again, a new
    request dials a new one.
    """

    def __init__(self, number: int, dialler: SimTransport, server: _Server) -> None:
        self.dialler = dialler
        self.server = server
        self.dialled = f"{_PREFIX}{server.name}"
        """The dialler's address for the link."""
        self.inbound = f"{_INBOUND_PREFIX}{number}"
        """The server's address for the link (its reply address)."""
        self.state = _LinkState.OPEN
        self.reason = ""
        """Why it closed, once it has."""
        self.closed = trio.Event()
        self.pending: set[PendingAnswer] = set()
        """Requests either way waiting for their answers over it."""

    @property
    def is_closed(self) -> bool:
        return self.state is _LinkState.CLOSED

    def joins(self, a: str, b: str) -> bool:
        """Whether the link runs between nodes ``a`` and ``b`` (either way round)."""
        return {self.dialler.name, self.server.name} == {a, b}

    def closed_error(self, address: str) -> TransportError:
        return TransportError(f"the link at {address} closed: {self.reason}")


class SimNetwork:
    """The in-process network: which names are served, the open links, and the faults
    in force.

    Fault controls apply to every request on this network, either way over a link,
    from the moment they are set. ``delivered`` counts requests handed to a handler (a
    duplicate copy is counted in ``duplicated`` instead), ``dropped`` counts requests
    lost on the way. A dial is instant: only a partition or a name nobody serves
    refuses it.
    """

    def __init__(self, seed: int = 0, timeout: float = 10.0) -> None:
        self.timeout = timeout
        """How long a caller waits for an answer, latency included, before giving up."""
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        self._random = random.Random(seed)
        self._servers: dict[str, _Server] = {}
        self._links: dict[str, _Link] = {}
        """Open links, by their server-side address."""
        self._partitions: set[frozenset[str]] = set()
        self._drop_probability = 0.0
        self._drop_next = 0
        self._latency = 0.0
        self._jitter = 0.0
        self._duplicate_probability = 0.0
        self._slow: dict[str, float] = {}
        """Extra round-trip seconds on every link that joins a slow node."""
        self._fresh = itertools.count(1)
        self._link_numbers = itertools.count(1)

    # -- fault controls -------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        """Cut nodes ``a`` and ``b`` apart: the links between them close at once (as
        if reset, failing what is in flight on them), and dials either way are
        :class:`Unreachable` until healed."""
        a, b = _node_name(a), _node_name(b)
        self._partitions.add(frozenset((a, b)))
        self._cut(a, b, f"{a} and {b} are partitioned", Unreachable)

    def heal(self, a: str, b: str) -> None:
        """Let ``a`` and ``b`` dial each other again (a no-op if they were not cut).
        Links cut by the partition stay closed: the next request dials anew."""
        self._partitions.discard(frozenset((_node_name(a), _node_name(b))))

    def heal_all(self) -> None:
        """End every partition."""
        self._partitions.clear()

    def disconnect(self, a: str, b: str) -> int:
        """Close every open link between nodes ``a`` and ``b`` now, as a network
        failure would, and say how many closed. Unlike :meth:`partition` it leaves
        them free to dial each other again at once."""
        a, b = _node_name(a), _node_name(b)
        return self._cut(a, b, f"the link between {a} and {b} was cut", TransportError)

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

    def slow(self, node: str, seconds: float) -> None:
        """Make every round trip over a link that joins ``node`` take ``seconds``
        longer, on top of :meth:`delay`: one slow machine or slow line among fast
        ones. ``slow(node, 0)`` makes it as fast as the rest again."""
        if seconds < 0:
            raise ValueError(f"latency cannot be negative: {seconds}")
        name = _node_name(node)
        if seconds:
            self._slow[name] = seconds
        else:
            self._slow.pop(name, None)

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

    def _register(self, name: str, handler: Handler, owner: SimTransport) -> _Server:
        if not name:
            name = self.fresh_name()
        if name in self._servers:
            raise TransportError(f"{_PREFIX}{name} is already served")
        server = _Server(name, handler, owner)
        self._servers[name] = server
        return server

    def _unregister(self, server: _Server) -> None:
        """``server`` stopped serving: free its name and close the links to it."""
        if self._servers.get(server.name) is server:
            del self._servers[server.name]
        for link in list(self._links.values()):
            if link.server is server:
                self._close(link, f"{_PREFIX}{server.name} stopped serving", Unreachable)

    def _reachable(self, caller: str, name: str) -> _Server:
        """The server at ``name`` as seen from ``caller``, or :class:`Unreachable`."""
        server = self._servers.get(name)
        if server is None or server.nursery is None:
            raise Unreachable(f"nobody serves {_PREFIX}{name}")
        if frozenset((caller, name)) in self._partitions:
            raise Unreachable(f"{caller} is partitioned from {_PREFIX}{name}")
        return server

    # -- links ----------------------------------------------------------------------

    def _dial(self, dialler: SimTransport, name: str) -> _Link:
        """Open a link from ``dialler`` to the server at ``name``."""
        server = self._reachable(dialler.name, name)
        link = _Link(next(self._link_numbers), dialler, server)
        self._links[link.inbound] = link
        dialler._opened(link.dialled, link)
        server.owner._opened(link.inbound, link)
        return link

    def _close(
        self, link: _Link, reason: str, error: type[TransportError] = TransportError
    ) -> None:
        """Close ``link`` (once): what waits on it fails with ``error``, and both ends
        hear of it."""
        if link.is_closed:
            return
        link.state = _LinkState.CLOSED
        link.reason = reason
        link.closed.set()
        del self._links[link.inbound]
        for reply in link.pending:
            reply.fail(
                error(f"the link between {link.dialler.name} and {link.dialled} closed: {reason}")
            )
        link.pending.clear()
        link.dialler._forget(link.dialled, link)
        link.server.owner._forget(link.inbound, link)

    def _cut(self, a: str, b: str, reason: str, error: type[TransportError]) -> int:
        cut = [link for link in self._links.values() if link.joins(a, b)]
        for link in cut:
            self._close(link, reason, error)
        return len(cut)

    # -- requests -------------------------------------------------------------------

    async def _carry(self, link: _Link, data: bytes, *, back: bool) -> bytes:
        """Carry one request over ``link`` through the faults in force: to its server,
        or ``back`` to its dialler."""
        address = link.inbound if back else link.dialled
        payload = bytes(data)
        if link.is_closed:
            raise link.closed_error(address)
        # Every random choice is drawn here, before the first checkpoint, so the
        # sequence of draws follows the order requests were made, whatever order
        # trio later runs the tasks in.
        if self._drop_next > 0:
            self._drop_next -= 1
            lost = True
        else:
            lost = self._drop_probability > 0 and self._random.random() < self._drop_probability
        latency = self._latency + self._slow.get(link.dialler.name, 0.0)
        latency += self._slow.get(link.server.name, 0.0)
        if self._jitter > 0:
            latency += self._random.uniform(0.0, self._jitter)
        twice = (
            self._duplicate_probability > 0 and self._random.random() < self._duplicate_probability
        )
        timeout = self.timeout
        reply = PendingAnswer()
        link.pending.add(reply)
        try:
            with trio.move_on_after(timeout):
                if lost:
                    self.dropped += 1
                    await reply.done.wait()  # only the link closing ends this early
                    return reply.result()
                with trio.move_on_after(latency / 2):
                    await reply.done.wait()  # the link closed on the way
                if reply.done.is_set():
                    return reply.result()
                self._hand_over(link, payload, reply, twice, back=back)
                await reply.done.wait()
                answer = reply.result()
                if latency > 0:
                    with trio.move_on_after(latency / 2):
                        await link.closed.wait()  # the link closed on the way back
                    if link.is_closed:
                        raise link.closed_error(address)
                return answer
        finally:
            link.pending.discard(reply)
        what = "lost" if lost else f"timed out after {timeout} s"
        raise TransportError(f"request to {address} {what}")

    def _hand_over(
        self, link: _Link, payload: bytes, reply: PendingAnswer, twice: bool, *, back: bool
    ) -> None:
        """Start the receiving end's handler on a request that arrived, in the
        receiving end's nursery; or fail it, if that end takes no requests."""
        if back:
            dialler = link.dialler
            handler, nursery = dialler._handler, dialler._nursery
            origin = Origin(source=link.server.name, link=link.dialled, reply=link.dialled)
            where = f"{_PREFIX}{dialler.name} (the dialler of {link.inbound})"
            if handler is None or nursery is None:
                why = (
                    "is not running" if nursery is None else "takes no requests on links it dialled"
                )
                reply.fail(TransportError(f"{where} {why}"))
                return
        else:
            handler, nursery = link.server.handler, link.server.nursery
            origin = Origin(source=link.dialler.name, link=link.inbound, reply=link.inbound)
            where = link.dialled
            assert nursery is not None, "a server's links close when it stops serving"
        self.delivered += 1
        if twice:
            self.duplicated += 1
        receiver = _Receiver(handler, where, origin)
        nursery.start_soon(self._deliver, receiver, payload, reply, twice)

    async def _deliver(
        self, receiver: _Receiver, data: bytes, reply: PendingAnswer, twice: bool
    ) -> None:
        """Hand one request to the handler; a duplicated one arrives again once the
        first copy is answered, like a retransmission, so "the caller gets the first
        answer" does not depend on how trio happens to schedule the two."""
        await self._invoke(receiver, data, reply)
        if twice:
            await self._invoke(receiver, data, None)

    async def _invoke(self, receiver: _Receiver, data: bytes, reply: PendingAnswer | None) -> None:
        """Run the handler on one copy; its answer or failure goes to ``reply``
        (``None`` for a duplicate copy, whose outcome nobody hears)."""
        try:
            answer = await receiver.handler(data, receiver.origin)
            if not isinstance(answer, bytes | bytearray | memoryview):
                raise TypeError(f"handler answered {type(answer).__name__}, not bytes")
            copied = bytes(answer)
        except Exception as exc:
            if reply is not None:
                reply.fail(TransportError(f"handler at {receiver.where} failed: {exc!r}"))
            return
        if reply is not None:
            reply.succeed(copied)


DEFAULT_NETWORK = SimNetwork()
"""Where ``sim://NAME`` resolves when a transport is given no network of its own."""


class SimTransport(RunsInBlock):
    """The :class:`~eidetica.actors.transports.base.Transport` for ``sim://``, and a
    :class:`~eidetica.actors.transports.base.TwoWay` one.

    ``name`` is who this transport's requests come from, for partitions. It defaults
    to a fresh name; a test that also serves at ``sim://NAME`` passes that same name,
    so that a partition cuts the node off in both directions.

    Requests peers send back over links this transport dialled are answered, in its
    own nursery, only while it runs as ``async with SimTransport(...)``; leaving the
    block closes its links.
    """

    scheme = SCHEME
    reply_scheme = INBOUND_SCHEME

    def __init__(self, network: SimNetwork | None = None, name: str | None = None) -> None:
        self.network = DEFAULT_NETWORK if network is None else network
        self.name = self.network.fresh_name("client") if name is None else _node_name(name)
        self._links: dict[str, _Link] = {}
        """Open links by this end's address for them: ``sim://NAME`` for those this
        transport dialled, ``sim-in://N`` for those dialled to a name it serves."""
        self._handler: Handler | None = None
        self._on_closed: LinkClosedCallback | None = None
        self._nursery: trio.Nursery | None = None
        self._changes = trio.lowlevel.ParkingLot()
        self.link_version = 0
        """Counts links opened and closed, for :meth:`link_changed`."""

    # -- the block that answers on dialled links ------------------------------------

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Self]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                for link in list(self._links.values()):
                    self.network._close(link, f"{_PREFIX}{self.name} stopped")
                nursery.cancel_scope.cancel()

    # -- two-way links --------------------------------------------------------------

    def attach(self, handler: Handler, on_closed: LinkClosedCallback) -> None:
        """Answer requests peers send back over links this transport dialled with
        ``handler``; tell ``on_closed(address, reason)`` whenever one of its links
        (dialled, or dialled to a name it serves) closes."""
        self._handler = handler
        self._on_closed = on_closed

    def detach(self) -> None:
        """Refuse requests on dialled links again, and stop telling of closures."""
        self._handler = None
        self._on_closed = None

    def close(self, address: str) -> None:
        """Close the open link at ``address``, if there is one; both ends hear of it."""
        link = self._links.get(address)
        if link is not None:
            self.network._close(link, f"closed by {_PREFIX}{self.name}")

    def is_open(self, address: str) -> bool:
        return address in self._links

    def links(self) -> list[str]:
        """This end's addresses of its open links, dialled and accepted."""
        return sorted(self._links)

    async def link_changed(self, since: int) -> None:
        """Wait until a link has opened or closed since ``link_version`` was ``since``."""
        while self.link_version <= since:
            await self._changes.park()

    def _opened(self, address: str, link: _Link) -> None:
        self._links[address] = link
        self._changed()

    def _forget(self, address: str, link: _Link) -> None:
        """``link`` closed: take it out of use and tell ``on_closed``."""
        if self._links.get(address) is not link:
            return
        del self._links[address]
        self._changed()
        log.debug("link %s of %s closed: %s", address, self.name, link.reason)
        if self._on_closed is not None:
            self._on_closed(address, link.reason)

    def _changed(self) -> None:
        self.link_version += 1
        self._changes.unpark_all()

    # -- serving and requests -------------------------------------------------------

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
        the links dialled to it close, and their callers get :class:`Unreachable`.
        Each request's origin names its link's reply address (``sim-in://N``).
        """
        server = self.network._register(_address_name(address), handler, self)
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

        ``address`` is ``sim://NAME``, over this transport's link to it (dialled now
        if none is open), or the ``sim-in://N`` address of a link a peer dialled to
        us, which is never dialled. Raises :class:`Unreachable` when nobody serves the
        address or it is partitioned from this transport's name, and
        :class:`TransportError` when the request is lost, times out, its link closes
        before the answer comes, or the handler fails.
        """
        if address.startswith(_INBOUND_PREFIX):
            link = self._links.get(address)
            if link is None:
                raise TransportError(f"the link at {address} has closed")
            return await self.network._carry(link, data, back=True)
        name = _address_name(address)
        link = self._links.get(f"{_PREFIX}{name}")
        if link is None:
            link = self.network._dial(self, name)
        return await self.network._carry(link, data, back=False)
