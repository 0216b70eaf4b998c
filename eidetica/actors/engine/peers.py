"""The peer table: one record per known peer, with an explicit lifecycle state.

::

    DIALLING --link up--> UP --link closed, dial address--> LOST --link up--> UP
        ^                  |                                  |
        |                  +--link closed, kept, no address--> DOWN --it dials in--> UP
     add_peer              +--link closed, a stranger--> (forgotten)
                        any --remove_peer--> (forgotten; the key is remembered as removed)

DIALLING and LOST are redialled with backoff until the peer answers; DOWN waits for
the peer to dial in (it dialled us before, or only ever calls over a one-shot
transport). A removed peer is never registered again by its own requests: only
``connect`` or ``add_peer`` bring it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from eidetica.errors import SyncError


class PeerState(enum.Enum):
    DIALLING = "dialling"
    UP = "up"
    LOST = "lost"
    DOWN = "down"


_LEGAL: dict[PeerState, frozenset[PeerState]] = {
    PeerState.DIALLING: frozenset({PeerState.UP, PeerState.DIALLING}),
    PeerState.UP: frozenset({PeerState.UP, PeerState.LOST, PeerState.DOWN}),
    PeerState.LOST: frozenset({PeerState.UP, PeerState.DIALLING}),
    PeerState.DOWN: frozenset({PeerState.UP, PeerState.DIALLING}),
}
"""The moves a record may make (forgetting it is always allowed)."""

REDIALLED = frozenset({PeerState.DIALLING, PeerState.LOST})
"""States in which the peer is dialled, with backoff, until it answers."""


@dataclass
class PeerRecord:
    """What the engine knows of one peer."""

    key: str
    state: PeerState
    trees: set[str] = field(default_factory=set)
    dial: str | None = None
    """An address we can dial it at (a peer that only dialled us has none)."""
    link: str | None = None
    """The address of its live link (UP only)."""
    kept: bool = False
    """It is in the sync state (we dialled it, or the operator related it): its
    records survive a restart and its link's loss."""
    since: float = 0.0
    """When its link came up."""
    wait: float = 0.0
    """The wait before its pending (or last) dial; backoff doubles it."""
    actor: bool = False
    """Its actor is running."""
    handed: bool = False
    """Its actor holds a link (maybe a lost one, which a transport that dials on
    demand may bring back for the next request)."""

    def move(self, to: PeerState) -> None:
        """Change state, refusing a move the lifecycle does not have."""
        if to not in _LEGAL[self.state]:
            raise SyncError(f"peer {self.key}: no move from {self.state.value} to {to.value}")
        self.state = to
        if to is not PeerState.UP:
            self.link = None

    @property
    def up(self) -> bool:
        return self.state is PeerState.UP

    @property
    def reachable(self) -> bool:
        """Whether jobs go to its actor: it is linked, or lost and being redialled
        while its actor still holds the old link. Pushes that fail there go to the
        retry queue; a peer that is back is caught up by a full sync anyway."""
        return self.up or (self.state is PeerState.LOST and self.handed)
