"""The syncs running now, with their progress: a listener on the node's event bus.

``sync.status()`` reports them (``syncing``), so ``eidetica status`` and the status
page can say a pull is under way, and ``eidetica get`` can warn that what it prints
may be partial. A sync is known from its ``SyncStarted`` until its ``SyncFinished``
or ``SyncFailed``; the peer actor publishes one of those however the sync ends, and a
peer lost or removed ends its syncs here too. At most one entry per (peer, tree).
"""

from __future__ import annotations

import eidetica.events as news
from eidetica.actors.engine.status import SyncingStatus


class InFlight:
    """What the bus said of the syncs that have started and not ended."""

    def __init__(self) -> None:
        self._syncs: dict[tuple[str, str], SyncingStatus] = {}

    def on_event(self, event: news.Event) -> None:
        match event:
            case news.SyncStarted(peer=peer, tree=tree):
                self._syncs[(peer, tree)] = SyncingStatus(peer, tree)
            case news.SyncProgress(peer=peer, tree=tree) if (peer, tree) in self._syncs:
                self._syncs[(peer, tree)] = SyncingStatus(
                    peer, tree, event.entries, event.bytes, event.expected
                )
            case news.SyncFinished(peer=peer, tree=tree) | news.SyncFailed(peer=peer, tree=tree):
                self._syncs.pop((peer, tree), None)
            case news.PeerLost(peer=peer) | news.PeerRemoved(peer=peer):
                for key in [key for key in self._syncs if key[0] == peer]:
                    del self._syncs[key]
            case _:
                pass

    def statuses(self) -> list[SyncingStatus]:
        return [self._syncs[key] for key in sorted(self._syncs)]

    def of_tree(self, tree: str) -> list[SyncingStatus]:
        return [status for status in self.statuses() if status.tree == tree]
