"""``sync.wait_synced(peer, tree)``: wait until this node and a peer hold the same tips.

The only proof that two nodes hold the same tips is a sync round that ends complete:
both sides then hold the tips this side reports. So the waiter asks for rounds of
that one tree with that peer, and returns after one that ended complete on the tips
this node still holds. While the peer is not linked it waits for the peer to link
(or ``retry`` seconds) and asks again; a round that left the two apart (a local
commit came meanwhile, or the peer holds entries this node refuses) is followed by
another once the tree changes or ``retry`` seconds pass. It never gives up by
itself: bound it with ``trio.fail_after``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

import eidetica.events as news
from eidetica.actors.bus import Bus
from eidetica.errors import EideticaError, NotShared, SyncError, UnknownPeer
from eidetica.storage.instance import Instance

log = logging.getLogger(__name__)

SyncOnce = Callable[[str, str], Awaitable[None]]
"""Runs one round of one tree with one peer: ``sync_with_peer(peer, tree=...)``."""


@dataclass
class _Watch:
    """What the bus said about one (peer, tree) since the last round was asked for."""

    peer: str
    tree: str
    finished: news.SyncFinished | None = None
    linked: trio.Event = field(default_factory=trio.Event)

    def __call__(self, event: news.Event) -> None:
        match event:
            case news.SyncFinished(peer=self.peer, tree=self.tree):
                self.finished = event
            case news.PeerLinked(peer=self.peer):
                self.linked.set()
            case _:
                pass


async def wait_synced(
    instance: Instance, bus: Bus, sync_once: SyncOnce, peer: str, tree: str, *, retry: float
) -> None:
    """See the module docstring."""
    watch = _Watch(peer, tree)
    last_error = ""
    bus.listen(watch)
    try:
        while True:
            watch.finished, watch.linked = None, trio.Event()
            version = instance.tree_version(tree)
            try:
                await sync_once(peer, tree)
            except (UnknownPeer, NotShared):
                raise
            except EideticaError as exc:  # not linked, or the round failed: wait for a link
                if bus.closed:
                    raise  # the engine stopped
                if str(exc) != last_error:  # said once per reason, not once per try
                    last_error = str(exc)
                    log.info("waiting to sync %s with %s: %s", tree, peer, exc)
                with trio.move_on_after(retry):
                    await watch.linked.wait()
                continue
            if _same_tips(instance, tree, watch.finished):
                return
            if watch.finished is None:
                raise SyncError(
                    f"{peer} did not sync {tree}: grant it read, or (on a hub) it may be"
                    " over its quota of trees or bytes"
                )
            with trio.move_on_after(retry):
                await instance.tree_changed(tree, version)
    finally:
        bus.unlisten(watch)


def _same_tips(instance: Instance, tree: str, finished: news.SyncFinished | None) -> bool:
    if finished is None or not finished.complete:
        return False
    return tuple(sorted(finished.tips)) == tuple(sorted(instance.sync_tips(tree)))
