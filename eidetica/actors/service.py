"""The server side of the protocol: what a node answers to a peer's requests.

One :class:`SyncService` per node serves every transport. It proves keys with the
handshake, remembers which session belongs to which proven key (and the session's
key), and answers sync requests only when their MAC proves they come from the
session's holder, and only for trees the peer may read. A peer learns nothing about a
tree it may not read: the answer is the same ``not-found`` as for a tree that does not
exist. Likewise a request whose MAC is missing or wrong gets the very answer a request
under an unknown session gets, so a relay that saw the handshake learns nothing from
trying. Every answer to an authenticated request carries a MAC of its own. A ``watch``
is authenticated the same way and held by :mod:`eidetica.actors.watching`.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from eidetica.actors.engine.policy import TreePolicy
from eidetica.actors.engine.view import EngineView
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.framing import LOCAL, Origin, peek
from eidetica.actors.transports.refusals import RefusalLog
from eidetica.actors.watching import Watching
from eidetica.errors import (
    BadMac,
    EideticaError,
    HandshakeBusy,
    ProtocolError,
    TreeNotFound,
    TreeUnavailable,
    Unauthenticated,
)
from eidetica.protocol.auth import Permission
from eidetica.protocol.codec import Codec
from eidetica.protocol.handshake import Responder as HandshakeResponder
from eidetica.protocol.mac import answer_mac, matches, request_mac
from eidetica.protocol.messages import (
    Ack,
    Changed,
    Envelope,
    ErrorReply,
    HandshakeFinish,
    HandshakeInit,
    Message,
    SendEntries,
    SyncRequest,
    SyncResponse,
    Watch,
)
from eidetica.protocol.ratelimit import TokenBuckets
from eidetica.protocol.reconcile import Responder, acknowledge
from eidetica.protocol.sessions import SessionTable
from eidetica.storage.instance import Instance
from eidetica.storage.treeview import TreeView

log = logging.getLogger(__name__)
refusals = RefusalLog(log)

Received = Callable[[str, tuple[str, ...], str], None]
"""Told (tree, stored ids, peer key) after a peer's entries were stored."""

Served = Callable[[str, str], None]
"""Told (tree, peer key) after a peer's sync request for the tree was answered."""

Sent = Callable[[str, str, int, int], None]
"""Told (peer key, tree, count, bytes) of the entries an answer carries to a peer."""

View = Callable[[], EngineView]
"""The engine's view as last published: read, never asked to change."""

Reachable = Callable[[str, str | None, str | None], None]
"""Told (peer key, reply address or None, tree or None) when a proven peer's request
tells the engine something new: after its handshake (no tree), and after a request for
a tree it may read. The address is where requests can go back over the link the peer
opened, or None over a one-shot transport."""

UNKNOWN_SESSION = "no handshake for this session: connect first"
"""What a request under an unknown or expired session is told, and a request whose MAC
is missing or wrong too."""


@dataclass(frozen=True, slots=True)
class _Caller:
    """The proven sender of one request, and what the MAC of its answer needs."""

    peer: str
    session: bytes
    key: bytes = field(repr=False)
    request_mac: bytes

    def seal(self, answer: Message) -> bytes:
        """The MAC of ``answer`` to this request."""
        return answer_mac(self.key, self.session, self.request_mac, answer)


class HandshakeGate:
    """How many handshakes a second one source, and one link, may start: each costs a
    signature, and floods must cost the flooder, not the node. One gate serves all of
    a node's services (one per listener), so the rate is the node's."""

    def __init__(self, rate: float) -> None:
        self._by_source = TokenBuckets(rate, 2 * rate)
        self._by_link = TokenBuckets(rate, 2 * rate)

    def check(self, origin: Origin, now: float) -> None:
        """Count one handshake from ``origin``; :class:`HandshakeBusy` past the rate."""
        if not self._by_link.allow(origin.link, now):
            raise HandshakeBusy(f"busy: too many handshakes on this link ({origin.link})")
        if not self._by_source.allow(origin.source, now):
            raise HandshakeBusy(f"busy: too many handshakes from {origin.source}")


class SyncService:
    """Answers requests for one node; hand :meth:`handle` to a transport."""

    def __init__(
        self,
        instance: Instance,
        codec: Codec,
        *,
        on_received: Received | None = None,
        on_served: Served | None = None,
        view: View | None = None,
        on_reachable: Reachable | None = None,
        policy: TreePolicy | None = None,
        on_taken: Served | None = None,
        limits: ServerLimits | None = None,
        gate: HandshakeGate | None = None,
        watching: Watching | None = None,
        on_sent: Sent | None = None,
        monotonic: Callable[[], float] = trio.current_time,
    ) -> None:
        self._instance = instance
        self._codec = codec
        self._on_received = on_received
        self._on_served = on_served
        self._on_sent = on_sent
        self._view = view or EngineView
        """Which trees this node syncs with whom, and whether a request is news (a busy
        peer must not post a notice per request)."""
        self._on_reachable = on_reachable
        self._policy = policy or TreePolicy()
        """Which trees we take in from peers we were not told to sync them with."""
        self._on_taken = on_taken
        self._clock = instance.wall_clock
        """Unix time, for the handshake's window (compared with the peer's clock)."""
        self._monotonic = monotonic
        """For expiry and rates, which a jump of the wall clock must not upset."""
        self._handshakes = HandshakeResponder(
            instance.device_key, random_bytes=instance.randomness.random_bytes
        )
        limits = limits or ServerLimits()
        self._sessions = SessionTable(
            idle_ttl=limits.session_idle,
            max_age=limits.session_lifetime,
            max_sessions=limits.max_sessions,
            max_per_source=limits.max_sessions_per_source,
        )
        self._gate = gate if gate is not None else HandshakeGate(limits.handshake_rate)
        self._watching = watching if watching is not None else Watching(instance, limits)
        """The node's held watches (one for all its services, like the gate)."""
        self._planner = Responder(random_bytes=instance.randomness.random_bytes)
        self.refused = 0
        """Requests answered with an error."""
        self.refused_by: Counter[str] = Counter()
        """The same, by error code (a fixed set: the protocol's codes)."""

    async def handle(self, data: bytes, origin: Origin = LOCAL) -> bytes:
        """One request's bytes in, the answer's bytes out; never raises for bad input.
        ``origin`` says who sent it (the transport knows)."""
        request_id = None
        caller: _Caller | None = None
        try:
            envelope = self._codec.decode(data)
            request_id = envelope.id
            if isinstance(envelope.body, SyncRequest | SendEntries | Watch):
                caller = self._authenticate(envelope)
            answer = await self._answer(envelope.body, caller, origin)
            if caller is not None and self._on_sent is not None:
                self._tell_sent(caller.peer, envelope.body, answer, self._on_sent)
        except BadMac as exc:
            answer = self._refuse(exc.code, str(exc), origin, kind="bad mac", told=UNKNOWN_SESSION)
        except ProtocolError as exc:
            answer = self._refuse(exc.code, str(exc), origin)
        except EideticaError as exc:
            answer = self._refuse("rejected", str(exc), origin)
        if request_id is None:  # undecodable: answer under whatever id can be read
            request_id = peek(self._codec, data).id
        mac = caller.seal(answer) if caller is not None else b""
        return self._codec.encode(answer, request_id, mac=mac)

    @staticmethod
    def _tell_sent(peer: str, request: Message, answer: Message, on_sent: Sent) -> None:
        """Tell ``on_sent`` of the entries ``answer`` carries, tree by tree."""
        carried: list[tuple[str, tuple[bytes, ...]]] = []
        match answer:
            case SyncResponse():
                carried.append((answer.tree, answer.entries))
            case Ack() if isinstance(request, SendEntries):
                carried.append((request.tree, answer.entries))
            case Changed():
                carried += [(news.tree, news.entries) for news in answer.trees]
        for tree, entries in carried:
            if entries:
                on_sent(peer, tree, len(entries), sum(map(len, entries)))

    def _refuse(
        self, code: str, reason: str, origin: Origin, *, kind: str = "", told: str = ""
    ) -> ErrorReply:
        """An error answer, and one throttled log line of ``kind`` (the code, unless
        given) with the ``reason``; the peer is ``told`` the reason, unless given."""
        self.refused += 1
        self.refused_by[code] += 1
        refusals.warning(
            kind or code, "refused a request from %s (%s): %s", origin.source, code, reason
        )
        return ErrorReply(code=code, message=(told or reason)[:1000])

    def _authenticate(self, envelope: Envelope) -> _Caller:
        """The proven sender of a request that needs a session: its session must be
        known and live, and its MAC made with that session's key."""
        session = envelope.session
        now = self._monotonic()
        known = self._sessions.find(session, now) if session is not None else None
        if session is None or known is None:
            raise Unauthenticated(UNKNOWN_SESSION)
        expected = request_mac(known.key, session, envelope.body)
        if not matches(expected, envelope.mac):
            what = "a wrong" if envelope.mac else "no"
            raise BadMac(
                f"{what} MAC on a request under a session of {known.peer_key} "
                f"({session[:8].hex()}...): not made by the session's holder"
            )
        self._sessions.use(session, now)
        return _Caller(known.peer_key, session, known.key, envelope.mac)

    async def _answer(self, body: Message, caller: _Caller | None, origin: Origin) -> Message:
        match body:
            case HandshakeInit():
                self._gate.check(origin, self._monotonic())
                return self._handshakes.receive_init(body, now=self._clock(), source=origin.source)
            case HandshakeFinish():
                proven = self._handshakes.receive_finish(body, now=self._clock())
                self._sessions.add(
                    proven.session,
                    proven.peer_key,
                    origin.source,
                    self._monotonic(),
                    key=proven.session_key,
                )
                self._reachable(proven.peer_key, origin, None)
                return proven.done
            case SyncRequest():
                peer = _proven(caller)
                view, taken = await self._readable(body.tree, peer)
                self._reachable(peer, origin, None if taken else body.tree)
                if self._on_served is not None:
                    self._on_served(body.tree, peer)
                return self._planner.answer(view, body, peer=peer)
            case SendEntries():
                peer = _proven(caller)
                view, taken = await self._readable(body.tree, peer)
                self._reachable(peer, origin, None if taken else body.tree)
                if taken:  # what it stores there counts to its bytes, this batch too
                    self._policy.brought(peer, body.tree)
                self._policy.charge(peer, body.tree, sum(len(raw) for raw in body.entries))
                receipt = await self._instance.receive(body.tree, body.entries, source=peer)
                if receipt.stored and taken:
                    self._took(peer, body.tree)
                if receipt.stored:
                    self._watching.received(peer, body.tree, receipt.stored, body.entries)
                if receipt.stored and self._on_received is not None:
                    self._on_received(body.tree, tuple(receipt.stored), peer)
                return acknowledge(
                    view,
                    body,
                    stored=len(receipt.stored),
                    rejected=len(receipt.rejected),
                    held=receipt.held,
                    missing=receipt.missing,
                )
            case Watch():
                peer = _proven(caller)
                return await self._watching.hold(
                    body,
                    peer=peer,
                    session=_session(caller),
                    may_read=partial(self._may_read, peer=peer),
                    stopping=origin.stopping,
                )
            case _:
                return self._refuse(
                    "unknown-message", f"{type(body).__name__} is not a request", origin
                )

    def _reachable(self, peer: str, origin: Origin, tree: str | None) -> None:
        """Tell the engine a proven peer reached us, unless it knows already."""
        address = origin.reply
        if self._on_reachable is None:
            return
        if self._view().heard(peer, tree, two_way=address is not None):
            return
        self._on_reachable(peer, address, tree)

    async def _may_read(self, tree: str, *, peer: str) -> bool:
        """Whether ``peer`` may read ``tree``, which this node holds (a watch of a tree
        it does not hold, or may not read, is never answered for that tree)."""
        try:
            level = await (await self._instance.open_tree(tree)).permission(peer)
        except TreeNotFound:
            return False
        return level is not None and level >= Permission.READ

    async def _readable(self, tree: str, peer: str) -> tuple[TreeView, bool]:
        """The tree, if ``peer`` may read it; otherwise the same answer as no tree.
        With it, whether the policy takes it in from ``peer`` (we do not hold it).

        A tree this node does not hold yet but syncs with ``peer`` counts as readable
        (and empty), so the peer can bootstrap us by pushing it; so does one the
        admission policy lets ``peer`` bring in.
        """
        view = self._instance.sync_view(tree)
        try:
            level = await (await self._instance.open_tree(tree)).permission(peer)
        except TreeNotFound:
            if self._view().relates(peer, tree):  # the operator's choice, or learned
                return view, False
            if await self._admits(peer, tree):
                return view, True
            level = None
        if level is None or level < Permission.READ:
            raise TreeUnavailable(f"no tree {tree} for this peer")
        return view, False

    async def _admits(self, peer: str, tree: str) -> bool:
        """Whether the admission policy takes ``tree`` in from ``peer``."""
        if self._policy.chosen_only:
            return False
        view = self._view()
        others = view.trees_of(peer) - view.relates(peer, tree)  # not this one
        decision = self._policy.asks(peer, tree, others)
        if inspect.isawaitable(decision):
            decision = await decision
        return bool(decision)

    def _took(self, peer: str, tree: str) -> None:
        """A tree came in under the policy: the engine relates it with ``peer``, so
        the tree flows through this node from now on."""
        log.info("took in tree %s from %s", tree, peer)
        if self._on_taken is not None:
            self._on_taken(peer, tree)


def _proven(caller: _Caller | None) -> str:
    """The proven key of a request's sender."""
    assert caller is not None, "handle authenticates every request that needs a session"
    return caller.peer


def _session(caller: _Caller | None) -> bytes:
    """The session of a request's sender."""
    assert caller is not None, "handle authenticates every request that needs a session"
    return caller.session
