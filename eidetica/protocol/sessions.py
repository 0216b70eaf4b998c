"""Proven sessions: which peer key and session key each session id stands for, and for
how long.

A completed handshake names a session and gives both sides its key (see
:mod:`eidetica.protocol.handshake`); the peer's later requests carry that id and a MAC
made with the key (:mod:`eidetica.protocol.mac`) instead of proving the peer's key
again, and the node acts on the peer key the table gives back once the MAC checks.
Anyone can make a key and complete a handshake, so this table is what a stranger
fills most cheaply, and it is bounded three ways: in all (``max_sessions``), per
source address (``max_per_source``) and per proven key (``max_per_key``).

The rule that makes the bounds safe is that a new session only ever replaces one of
its own: the least recently used session of the same source or of the same key (only
the key's holder can prove that key). When the table is full of live sessions that are
neither, the new one is refused with :class:`~eidetica.errors.HandshakeBusy` rather
than pushing out someone else's. So a flood of throwaway keys earns the flooder "busy"
answers and costs an honest peer nothing it holds; what keeps the table from staying
full is expiry: a session lapses ``idle_ttl`` seconds after its last use and
``max_age`` seconds after it was made, whatever its use.

Like the rest of ``protocol/`` this is sans-IO: time comes in as ``now`` (seconds, from
any clock that does not go back). Expired sessions are dropped from the front of two
orders, by last use and by creation, so each call costs amortised constant time and
never scans the table; a lookup also checks its own session's expiry, so a clock that
steps back can delay pruning but never revive a session.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from eidetica.errors import HandshakeBusy
from eidetica.protocol.keyexchange import SESSION_KEY_BYTES

DEFAULT_IDLE_TTL = 3600.0
"""Seconds a session lives without being used."""

DEFAULT_MAX_AGE = 86400.0
"""Seconds a session lives at most, however much it is used: then the peer proves its
key again, with fresh ephemeral keys, so no session key is used for more than a day."""

DEFAULT_MAX_SESSIONS = 4096
"""Sessions a node holds in all."""

DEFAULT_MAX_PER_SOURCE = 64
"""Sessions one source address may hold; past it, its least recently used goes."""

DEFAULT_MAX_PER_KEY = 8
"""Sessions one proven key may hold; past it, its least recently used goes."""


@dataclass(frozen=True, slots=True)
class Session:
    """What a session id stands for: the peer key it proved and the key its MACs use."""

    peer_key: str
    key: bytes = field(repr=False)


@dataclass(slots=True)
class _Record:
    """What the table knows of one session."""

    session: Session
    source: str
    created: float
    last_used: float

    @property
    def peer_key(self) -> str:
        return self.session.peer_key


class SessionTable:
    """Session ids mapped to the peer keys they proved and their session keys, bounded
    and expiring.

    :meth:`add` records a session after a handshake. :meth:`find` finds a request's
    session without counting a use, so that the request's MAC can be checked first,
    and :meth:`use` then refreshes its last use: a request whose MAC fails (a relay's,
    say) keeps no session alive. :meth:`lookup` does both. See the module's docstring
    for the bounds and why a stranger cannot push out a live session.
    """

    def __init__(
        self,
        *,
        idle_ttl: float = DEFAULT_IDLE_TTL,
        max_age: float = DEFAULT_MAX_AGE,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_per_key: int = DEFAULT_MAX_PER_KEY,
    ) -> None:
        for name, count in (
            ("max_sessions", max_sessions),
            ("max_per_source", max_per_source),
            ("max_per_key", max_per_key),
        ):
            if count < 1:
                raise ValueError(f"{name} must be at least 1, not {count}")
        for name, seconds in (("idle_ttl", idle_ttl), ("max_age", max_age)):
            if not seconds > 0:
                raise ValueError(f"{name} must be more than 0, not {seconds}")
        self._idle_ttl = idle_ttl
        self._max_age = max_age
        self._max_sessions = max_sessions
        self._max_per_source = max_per_source
        self._max_per_key = max_per_key
        self._by_use: OrderedDict[bytes, _Record] = OrderedDict()
        """Every session, least recently used first."""
        self._by_creation: OrderedDict[bytes, None] = OrderedDict()
        """Every session, oldest first."""
        self._of_source: dict[str, OrderedDict[bytes, None]] = {}
        """Each source's sessions, least recently used first."""
        self._of_key: dict[str, OrderedDict[bytes, None]] = {}
        """Each key's sessions, least recently used first."""

    def __len__(self) -> int:
        """Sessions held, the expired ones not yet pruned included."""
        return len(self._by_use)

    def find(self, session: bytes, now: float) -> Session | None:
        """What ``session`` stands for, or ``None`` if it is unknown or expired. Finding
        it is not a use: see :meth:`use`."""
        self._prune(now)
        record = self._by_use.get(session)
        if record is None:
            return None
        if self._expired(record, now):
            self._remove(session)
            return None
        return record.session

    def use(self, session: bytes, now: float) -> None:
        """Count a use of ``session`` (a request that proved it holds the key): its idle
        time starts again. Nothing happens for a session the table does not hold."""
        record = self._by_use.get(session)
        if record is None:
            return
        record.last_used = max(record.last_used, now)
        self._by_use.move_to_end(session)
        self._of_source[record.source].move_to_end(session)
        self._of_key[record.peer_key].move_to_end(session)

    def lookup(self, session: bytes, now: float) -> Session | None:
        """:meth:`find`, then :meth:`use` if found."""
        found = self.find(session, now)
        if found is not None:
            self.use(session, now)
        return found

    def add(self, session: bytes, peer_key: str, source: str, now: float, *, key: bytes) -> None:
        """Record that ``session``, made by a handshake from ``source``, proves ``peer_key``
        and that its MACs are made with ``key``.

        The source's or the key's least recently used session makes way if either is at
        its cap, or if the table is full. Raises :class:`~eidetica.errors.HandshakeBusy`,
        and changes nothing, when the table is full of live sessions of other sources
        and keys.
        """
        if len(key) != SESSION_KEY_BYTES:
            raise ValueError(f"a session key is {SESSION_KEY_BYTES} bytes, not {len(key)}")
        self._prune(now)
        self._remove(session)
        self._make_room(peer_key, source)
        self._by_use[session] = _Record(Session(peer_key, key), source, created=now, last_used=now)
        self._by_creation[session] = None
        self._of_source.setdefault(source, OrderedDict())[session] = None
        self._of_key.setdefault(peer_key, OrderedDict())[session] = None

    def forget_key(self, peer_key: str) -> int:
        """Drop every session of ``peer_key`` (a peer removed or no longer trusted); how
        many there were."""
        sessions = list(self._of_key.get(peer_key, ()))
        for session in sessions:
            self._remove(session)
        return len(sessions)

    def _make_room(self, peer_key: str, source: str) -> None:
        """Drop what a new session of ``peer_key`` from ``source`` displaces: only ever
        a session of the same key or the same source."""
        if len(self._of_key.get(peer_key, ())) >= self._max_per_key:
            self._remove_least_recent(self._of_key[peer_key])
        if len(self._of_source.get(source, ())) >= self._max_per_source:
            self._remove_least_recent(self._of_source[source])
        if len(self._by_use) < self._max_sessions:
            return
        own = self._of_source.get(source) or self._of_key.get(peer_key)
        if not own:
            raise HandshakeBusy(
                f"busy: all {self._max_sessions} sessions are live and none is this "
                "source's or this key's to replace; try again later"
            )
        self._remove_least_recent(own)

    def _remove_least_recent(self, sessions: OrderedDict[bytes, None]) -> None:
        self._remove(next(iter(sessions)))

    def _remove(self, session: bytes) -> None:
        record = self._by_use.pop(session, None)
        if record is None:
            return
        del self._by_creation[session]
        _discard(self._of_source, record.source, session)
        _discard(self._of_key, record.peer_key, session)

    def _expired(self, record: _Record, now: float) -> bool:
        return now - record.last_used > self._idle_ttl or now - record.created > self._max_age

    def _prune(self, now: float) -> None:
        """Drop expired sessions from the front of both orders: with a clock that does
        not go back, all the idle ones lead the order of use and all the old ones lead
        the order of creation."""
        while self._by_use:
            session, record = next(iter(self._by_use.items()))
            if now - record.last_used <= self._idle_ttl:
                break
            self._remove(session)
        while self._by_creation:
            session = next(iter(self._by_creation))
            if now - self._by_use[session].created <= self._max_age:
                break
            self._remove(session)


def _discard(groups: dict[str, OrderedDict[bytes, None]], name: str, session: bytes) -> None:
    """Take ``session`` out of the group ``name``, and the group out when it empties."""
    group = groups[name]
    del group[session]
    if not group:
        del groups[name]
