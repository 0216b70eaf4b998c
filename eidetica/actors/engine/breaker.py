"""A peer's circuit breaker, as plain state: time comes in as ``now``.

After ``failure_threshold`` failures in a row the breaker opens: jobs for the peer
fail at once for ``cooldown`` seconds, so a peer that is down costs nothing to ask.
Then it is half-open: the next job is tried, and closes the breaker if it succeeds
or opens it again, for another cooldown, if it fails.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    cooldown: float = 60.0


@dataclass
class Breaker:
    """One peer's breaker: how many jobs failed in a row, and until when it is open."""

    consecutive_failures: int = 0
    open_until: float | None = None

    def state(self, now: float) -> BreakerState:
        if self.open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.open_until else BreakerState.HALF_OPEN

    def refuses(self, now: float) -> bool:
        """Whether a job must fail at once, untried."""
        return self.state(now) is BreakerState.OPEN

    def failed(self, now: float, config: BreakerConfig) -> None:
        """A tried job failed: open the breaker once failures reach the threshold (a
        failure while half-open is past it, so it opens again)."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= config.failure_threshold:
            self.open_until = now + config.cooldown

    def succeeded(self) -> None:
        """A tried job went through: close the breaker."""
        self.consecutive_failures = 0
        self.open_until = None
