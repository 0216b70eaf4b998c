"""What a node's servers let strangers hold: connections, time and buffered bytes.

Anything that can open a TCP connection to a node may be hostile, so every resource a
connection can hold has a cap, and every wait a deadline. :class:`ServerLimits` names
them (``eidetica serve`` takes each as a flag, an ``EIDETICA_*`` variable or a TOML
key); :class:`Admission` counts connections in all and per source address and admits
or refuses a new one; :class:`ByteBudget` bounds the bytes of messages a node holds
while they arrive and are handled, across all its connections. One :class:`Admission`
serves all of a node's listeners, HTTP and WebSocket alike, so the bounds are the
node's, not each listener's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """The bounds on what the peers and clients of one node can make it hold.

    ``max_connections`` and ``max_connections_per_source`` cap open connections (a
    source is the remote IP address); a connection past either cap is closed as soon
    as it is accepted. ``handshake_timeout`` is how long a WebSocket link may stay open
    without completing a handshake (its upgrade included); ``message_timeout`` bounds
    one whole request body or WebSocket message from its first byte to its last, so a
    body sent a byte a second is cut. ``max_buffered_bytes`` bounds the bytes of
    messages being received, handled or answered at once, node-wide, and
    ``max_buffered_bytes_per_source`` what one source address may hold of it (room for
    one whole message and a little more); a message that would go over either ends its
    connection (WebSocket, code 1013) or is answered 503 (HTTP).
    ``handshake_rate`` is how many handshakes a second one source, or one connection,
    may start (with bursts of twice that).

    ``max_sessions`` and ``max_sessions_per_source`` cap the proven sessions a node
    keeps (each source replaces its own when at its cap; a full table refuses new ones
    as busy rather than push out another source's); a session unused for
    ``session_idle`` seconds expires, and any session ``session_lifetime`` seconds
    after its handshake, however much it is used (the peer then proves its key again,
    with a fresh session key). ``max_held_per_peer`` is how many received
    entries one peer may have waiting for their parents.

    A watch (an HTTP client's long poll for new entries) is held at most
    ``watch_hold`` seconds, and never more than three quarters of
    ``message_timeout``: the HTTP server closes a connection that sends nothing for
    that long, and the answer must be out before. ``max_watches_per_session`` and
    ``max_watches`` cap the watches held at once for one session and for the node;
    one past either is answered ``busy`` at once.
    """

    max_connections: int = 1024
    max_connections_per_source: int = 64
    handshake_timeout: float = 10.0
    message_timeout: float = 30.0
    max_buffered_bytes: int = 64 * MIB
    max_buffered_bytes_per_source: int = 20 * MIB
    handshake_rate: float = 10.0
    max_sessions: int = 4096
    max_sessions_per_source: int = 64
    session_idle: float = 3600.0
    session_lifetime: float = 86400.0
    max_held_per_peer: int = 1000
    watch_hold: float = 20.0
    max_watches: int = 256
    max_watches_per_session: int = 4

    @property
    def longest_hold(self) -> float:
        """How long a watch is held at most: ``watch_hold``, within three quarters of
        ``message_timeout``."""
        return min(self.watch_hold, 0.75 * self.message_timeout)

    def __post_init__(self) -> None:
        counts = (
            "max_connections",
            "max_connections_per_source",
            "max_buffered_bytes",
            "max_buffered_bytes_per_source",
            "max_sessions",
            "max_sessions_per_source",
            "max_held_per_peer",
            "max_watches",
            "max_watches_per_session",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        positive = (
            "handshake_timeout",
            "message_timeout",
            "handshake_rate",
            "session_idle",
            "session_lifetime",
            "watch_hold",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, not {getattr(self, name)}")


class ByteBudget:
    """Bytes that may be held at once, in all and by each owner (a source address);
    reserved before they are taken in, released after. A reservation that does not fit
    is refused, never waited for: whoever asks is a connection that should be told
    "busy", not queued. The share per owner keeps one address from holding it all."""

    def __init__(self, limit: int, per_owner: int | None = None) -> None:
        self.limit = limit
        self.per_owner = limit if per_owner is None else per_owner
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._by_owner: Counter[str] = Counter()

    def reserve(self, size: int, owner: str = "") -> bool:
        """Take ``size`` bytes for ``owner`` if they fit; whether they did."""
        if self.used + size > self.limit or self._by_owner[owner] + size > self.per_owner:
            self.refused += 1
            return False
        self.used += size
        self._by_owner[owner] += size
        self.peak = max(self.peak, self.used)
        return True

    def release(self, size: int, owner: str = "") -> None:
        self.used -= size
        self._by_owner[owner] -= size
        if self._by_owner[owner] <= 0:
            del self._by_owner[owner]

    def held_by(self, owner: str) -> int:
        return self._by_owner[owner]


@dataclass
class Admission:
    """Open connections of one node, in all and per source, within :class:`ServerLimits`.

    :meth:`admit` is called once per accepted connection and, if it admits, is paired
    with exactly one :meth:`release` when the connection ends. ``refused`` counts the
    connections turned away.
    """

    limits: ServerLimits = field(default_factory=ServerLimits)
    open: int = 0
    refused: int = 0
    _by_source: Counter[str] = field(default_factory=Counter)
    budget: ByteBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = ByteBudget(
            self.limits.max_buffered_bytes, self.limits.max_buffered_bytes_per_source
        )

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source``; ``None`` if it may stay, else why not."""
        if self.open >= self.limits.max_connections:
            reason = f"the node has {self.open} connections, its limit"
        elif self._by_source[source] >= self.limits.max_connections_per_source:
            reason = f"{source} has {self._by_source[source]} connections, the limit per source"
        else:
            self.open += 1
            self._by_source[source] += 1
            return None
        self.refused += 1
        return reason

    def release(self, source: str) -> None:
        """One admitted connection from ``source`` has ended."""
        self.open -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def connections_from(self, source: str) -> int:
        return self._by_source[source]
