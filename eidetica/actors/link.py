"""The client side of the protocol: a handshake, then requests under its session.

Every request under the session carries a MAC made with the session's key, and its
answer must carry the answer's MAC (:mod:`eidetica.protocol.mac`): an answer whose MAC
is missing or wrong was made or changed by someone between us and the peer, and fails
that request with :class:`~eidetica.errors.BadMac`, which fails the job that sent it and
nothing else. An error answer without a MAC is taken for the failure it says it is,
since anyone on the path can make a request fail by dropping it anyway; its code
``unauthenticated`` (an unknown or expired session) tells the caller to prove itself
again, which the peer actor does once, transparently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from eidetica.actors.transports.base import Transport
from eidetica.errors import BadMac, RemoteError, UnknownMessage
from eidetica.protocol.codec import Codec
from eidetica.protocol.handshake import Initiator, Proven
from eidetica.protocol.limits import MAX_ENTRIES_PER_BATCH
from eidetica.protocol.mac import answer_mac, matches, request_mac
from eidetica.protocol.messages import (
    Ack,
    Changed,
    Envelope,
    ErrorReply,
    HandshakeDone,
    HandshakeReply,
    Message,
    SendEntries,
    SyncRequest,
    SyncResponse,
    Watch,
    WatchedTree,
)
from eidetica.protocol.reconcile import SyncRound
from eidetica.protocol.summary import SALT_BYTES
from eidetica.storage.instance import Instance

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
    bytes_received: int = 0
    """Bytes of the entries this side stored (their encoded form)."""
    sent: int = 0
    """Entries this side sent the peer."""
    bytes_sent: int = 0


Progress = Callable[[int, int, "int | None"], None]
"""Told after each page a sync stores: entries and bytes received so far, and the
entries expected in all (None when the peer gives no hint)."""


class Link:
    """Requests to one peer at one address, over one transport."""

    def __init__(self, transport: Transport, address: str, codec: Codec) -> None:
        self.transport = transport
        self.address = address
        self._codec = codec
        self._proven: Proven | None = None

    @property
    def peer_key(self) -> str | None:
        """The peer's key, once a handshake has proven it."""
        return self._proven.peer_key if self._proven is not None else None

    @property
    def session(self) -> bytes | None:
        """The current session's id, once a handshake has made one."""
        return self._proven.session if self._proven is not None else None

    async def call(self, message: Message, expect: type[M]) -> M:
        """Send ``message`` under the session (so after a handshake); return the answer
        if it is an ``expect``, raise otherwise."""
        return await self._call(message, expect, self._proven)

    def envelope(self, message: Message) -> bytes:
        """``message`` as :meth:`call` sends it: under the session, with its MAC."""
        return self._sealed(message, self._proven)[0]

    def _sealed(self, message: Message, proven: Proven | None) -> tuple[bytes, bytes]:
        """The envelope of ``message`` under ``proven``'s session if given, and its MAC."""
        if proven is None:
            return self._codec.encode(message), b""
        mac = request_mac(proven.session_key, proven.session, message)
        return self._codec.encode(message, session=proven.session, mac=mac), mac

    async def _call(self, message: Message, expect: type[M], proven: Proven | None) -> M:
        """Send ``message``, under ``proven``'s session if given, and check the answer."""
        data, mac = self._sealed(message, proven)
        envelope = self._codec.decode(await self.transport.request(self.address, data))
        answer = envelope.body
        if proven is not None:
            _check_answer(proven, mac, envelope)
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
    ) -> str:
        """Prove keys both ways and agree on a new session key; return the peer's proven
        key. The handshake's own messages go under no session; until it is done, the
        link's requests go on under the session it had."""
        initiator = Initiator(
            instance.device_key,
            now=instance.wall_clock(),
            expected_key=expected_key,
            random_bytes=instance.randomness.random_bytes,
        )
        reply = await self._call(initiator.start(), HandshakeReply, None)
        done = await self._call(initiator.receive_reply(reply), HandshakeDone, None)
        self._proven = initiator.receive_done(done)
        return self._proven.peer_key

    async def sync_tree(
        self,
        instance: Instance,
        tree: str,
        *,
        common: tuple[str, ...] = (),
        progress: Progress | None = None,
    ) -> RoundResult:
        """One full two-way sync of ``tree`` with the peer, telling ``progress`` of
        each page that arrives."""
        round_ = SyncRound(
            instance.sync_view(tree),
            tree,
            common=common,
            salt=instance.randomness.random_bytes(SALT_BYTES),
        )
        message: SyncRequest | SendEntries | None = round_.first()
        stored: list[str] = []
        got = sent = sent_bytes = 0
        while message is not None:
            expect: type[SyncResponse] | type[Ack] = (
                SyncResponse if isinstance(message, SyncRequest) else Ack
            )
            if isinstance(message, SendEntries):
                sent += len(message.entries)
                sent_bytes += sum(map(len, message.entries))
            answer = await self.call(message, expect)
            missing: list[str] = []
            # A page may hold up to MAX_ENTRIES_PER_PAGE entries; storage takes them a
            # batch at a time, so checking and storing a page take no longer loop
            # steps than a page of MAX_ENTRIES_PER_BATCH did.
            for start in range(0, max(len(answer.entries), 1), MAX_ENTRIES_PER_BATCH):
                batch = answer.entries[start : start + MAX_ENTRIES_PER_BATCH]
                receipt = await instance.receive(tree, batch, source=self.peer_key)
                stored += receipt.stored
                got += receipt.stored_bytes
                missing = receipt.missing
                if progress is not None and batch:
                    left = len(answer.entries) - start - len(batch)
                    progress(len(stored), got, _expected(len(stored) + left, answer))
            message = round_.next(answer, missing)
        tips = tuple(instance.sync_tips(tree))
        return RoundResult(
            tree,
            round_.round_trips,
            len(stored),
            round_.complete,
            tuple(stored),
            tips,
            bytes_received=got,
            sent=sent,
            bytes_sent=sent_bytes,
        )

    async def watch(self, trees: Iterable[tuple[str, Iterable[str]]], *, wait: int) -> Changed:
        """Ask the peer to answer once it holds, of one of ``trees``, a tip not among
        the given ones (the tips this side holds or has heard of), or after ``wait``
        seconds at most; see :mod:`eidetica.actors.watching`. The transport must let
        a request take that long."""
        named = tuple(WatchedTree(tree, tuple(sorted(tips))) for tree, tips in trees)
        return await self.call(Watch(trees=named, wait=wait), Changed)


def _expected(received: int, answer: SyncResponse | Ack) -> int | None:
    """Entries a sync expects in all after this answer: the peer's hint, if it gave one."""
    if not isinstance(answer, SyncResponse):
        return None
    if answer.more and not answer.remaining:
        return None  # an older peer, or one that will not say
    return received + answer.remaining


def _check_answer(proven: Proven, request: bytes, answer: Envelope) -> None:
    """Raise :class:`BadMac` unless ``answer`` carries the MAC of an answer to the
    request whose MAC is ``request``; an error answer may come without one."""
    if not answer.mac and isinstance(answer.body, ErrorReply):
        return
    expected = answer_mac(proven.session_key, proven.session, request, answer.body)
    if not matches(expected, answer.mac):
        what = "a wrong" if answer.mac else "no"
        raise BadMac(f"the answer carries {what} MAC: it was not made by the session's peer")
