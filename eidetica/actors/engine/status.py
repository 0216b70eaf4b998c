"""The engine's status, typed: what ``sync.status()`` returns.

Every part is an immutable ``msgspec.Struct``, so ``msgspec.to_builtins(status)``
gives plain JSON-ready data (``eidetica status --json``) and code reads attributes
with types instead of digging in dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from eidetica.actors.engine.breaker import Breaker
from eidetica.actors.engine.core import Engine
from eidetica.actors.engine.peers import PeerRecord
from eidetica.actors.engine.retries import RetrySnapshot


@dataclass(frozen=True, slots=True)
class Health:
    """What a peer actor has seen of its peer: published whole after every job."""

    syncs: int = 0
    failures: int = 0
    pushes: int = 0
    probes: int = 0
    last_sync: float | None = None
    last_error: str | None = None
    received: int = 0
    breaker: Breaker = field(default_factory=Breaker)
    attempts: tuple[float, ...] = ()
    """When recent requests were tried (trio time), at most 64."""


class PeerStatus(msgspec.Struct, frozen=True):
    """One known peer."""

    key: str
    state: str
    """``dialling``, ``up``, ``lost`` (redialling) or ``down`` (waiting for it)."""
    address: str | None
    """Its live link, if up."""
    dial: str | None
    """Where we dial it, if we know."""
    kept: bool
    """Its records survive a restart (we chose it, or relate trees with it)."""
    trees: list[str]
    syncs: int
    failures: int
    pushes: int
    probes: int
    breaker: str
    attempts: list[float]
    last_sync: float | None
    last_error: str | None
    trees_last_synced: dict[str, float | None]
    queued_retries: int
    dropped_jobs: int = 0


class RetryStatus(msgspec.Struct, frozen=True):
    due: float
    peer: str
    tree: str
    attempts: int


class ServerStatus(msgspec.Struct, frozen=True):
    address: str
    restarts: int
    last_error: str | None
    listening: bool = True
    """False while a failed server waits to be started again."""


class WatchStatus(msgspec.Struct, frozen=True):
    """The watches (long polls) this node holds for HTTP clients."""

    held: int = 0
    refused: int = 0
    """Refused as busy: past the caps per session or per node."""


class TreeLag(msgspec.Struct, frozen=True):
    """How far one peer is from this node's copy of a tree, as far as this node knows:
    read from the cursor (the tips both sides held after the last complete sync)."""

    in_step: bool
    """The peer's last known tips are this node's tips now."""
    behind: int | None
    """Entries of ours not below the cursor's tips (None: never synced completely)."""
    capped: bool = False
    """Counting stopped at the cap: ``behind`` is a lower bound."""
    last_sync: float | None = None
    """Wall-clock time (``time.time()``) of the last complete sync."""


class TreeStatus(msgspec.Struct, frozen=True):
    """One tree this node syncs, and each of its peers' lag."""

    root: str
    entries: int
    tips: list[str]
    peers: dict[str, TreeLag]
    held: int = 0
    """Entries of it waiting in the holding area for their parents."""


class SyncingStatus(msgspec.Struct, frozen=True):
    """A sync running now: what it has received so far, and the total the peer said
    it would send (None: it did not say)."""

    peer: str
    tree: str
    entries: int = 0
    bytes: int = 0
    expected: int | None = None


class SyncStatus(msgspec.Struct, frozen=True):
    """A snapshot of one node's sync engine."""

    servers: list[ServerStatus]
    peers: dict[str, PeerStatus]
    retries: list[RetryStatus]
    retries_dropped: int
    refused_requests: int
    dropped_notices: int
    crashed: list[str]
    """Actors that kept crashing and were left down."""
    watches: WatchStatus = WatchStatus()
    trees: dict[str, TreeStatus] = {}
    """The trees this node syncs with some peer, by root id."""
    refusals: dict[str, int] = {}
    """Refused requests and connections, by reason (an error code, ``connection``
    for the connection caps, ``watch-busy`` for watches past their caps)."""
    restarts: dict[str, int] = {}
    """Restarts of crashed actors, by actor (servers: ``server <address>``)."""
    syncing: list[SyncingStatus] = []
    """The syncs running now, with their progress."""

    @property
    def down(self) -> dict[str, PeerStatus]:
        """The peers that are not linked now."""
        return {key: peer for key, peer in self.peers.items() if peer.state != "up"}

    @property
    def server_restarts(self) -> dict[str, ServerStatus]:
        """The servers that had to be started again."""
        return {server.address: server for server in self.servers if server.restarts}


@dataclass(frozen=True, slots=True)
class ActorViews:
    """What the actors published last, for status: never changed, only replaced."""

    health: Mapping[str, Health]
    dropped: Mapping[str, int]
    retries: RetrySnapshot


def peer_statuses(engine: Engine, now: float, views: ActorViews) -> dict[str, PeerStatus]:
    """Every peer the engine knows, at trio time ``now``."""
    return {
        key: _peer_status(engine, record, now, views)
        for key, record in sorted(engine.peers.items())
    }


def retry_statuses(retries: RetrySnapshot) -> list[RetryStatus]:
    return [RetryStatus(due, item.peer, item.tree, item.attempts) for due, item in retries.items]


def _peer_status(engine: Engine, record: PeerRecord, now: float, views: ActorViews) -> PeerStatus:
    health = views.health.get(record.key, Health())
    return PeerStatus(
        key=record.key,
        state=record.state.value,
        address=record.link,
        dial=record.dial,
        kept=record.kept,
        trees=sorted(record.trees),
        syncs=health.syncs,
        failures=health.failures,
        pushes=health.pushes,
        probes=health.probes,
        breaker=health.breaker.state(now).value,
        attempts=list(health.attempts),
        last_sync=health.last_sync,
        last_error=health.last_error,
        trees_last_synced={
            tree: engine.last_sync.get((record.key, tree)) for tree in sorted(record.trees)
        },
        queued_retries=sum(1 for _, item in views.retries.items if item.peer == record.key),
        dropped_jobs=views.dropped.get(record.key, 0),
    )
