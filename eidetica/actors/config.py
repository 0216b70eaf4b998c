"""The sync engine's settings: intervals, bounds and policies, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.engine.policy import AcceptTrees, TreeQuota
from eidetica.actors.transports.admission import ServerLimits


@dataclass(frozen=True)
class SyncConfig:
    """Intervals (seconds of trio time) and bounds of the engine."""

    periodic_sync: float = 300.0
    connection_check: float = 60.0
    retry_sweep: float = 30.0
    max_retries: int = 10
    retry_jitter: float = 0.1
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_restarts: int = 5
    """Crashes of one actor before it is reported and left down."""
    inbox_size: int = 256
    peer_inbox_size: int = 64
    redial_min: float = 1.0
    """Seconds before the first redial of a peer whose link closed; each failed redial
    doubles the wait, up to ``redial_max``, stretched by up to ``retry_jitter``."""
    redial_max: float = 60.0
    shutdown_grace: float = 5.0
    """Seconds that jobs running when the engine is asked to stop (leaving ``async with
    inst.sync()``) have to finish, before they are cancelled."""
    limits: ServerLimits = field(default_factory=ServerLimits)
    """What the node's servers let clients hold (connections, time, bytes)."""
    accept_trees: AcceptTrees = "chosen"
    """Which trees the node takes in from peers it was not told to sync them with
    (:mod:`eidetica.actors.engine.policy`)."""
    tree_quota: TreeQuota = field(default_factory=TreeQuota)
    """What one peer may bring in when ``accept_trees`` is not ``"chosen"``."""
