"""The peer actor: one per peer, owning that peer's link and doing its requests in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from eidetica.actors.link import Link
from eidetica.actors.reply import Reply
from eidetica.errors import EideticaError
from eidetica.protocol.messages import Ack, SendEntries
from eidetica.storage.instance import Instance

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncJob:
    """Sync these trees fully, both ways, then answer."""

    trees: tuple[str, ...]
    reply: Reply[None] | None


@dataclass(frozen=True, slots=True)
class PushJob:
    """Offer these entries of a tree to the peer (a commit, or entries to forward)."""

    tree: str
    entries: tuple[bytes, ...]


Job = SyncJob | PushJob


@dataclass
class PeerHealth:
    """What the peer actor has seen of its peer (read by status snapshots)."""

    syncs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    pushes: int = 0
    last_sync: float | None = None
    last_error: str | None = None
    received: int = 0
    round_trips: list[int] = field(default_factory=list)


async def run_peer(
    instance: Instance,
    link: Link,
    jobs: trio.MemoryReceiveChannel[Job],
    health: PeerHealth,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Do the peer's jobs one at a time, in order, until the inbox closes."""
    task_status.started()
    async for job in jobs:
        try:
            match job:
                case SyncJob(trees, reply):
                    await _sync(instance, link, trees, health)
                    if reply is not None:
                        reply.set(None)
                case PushJob(tree, entries):
                    await _push(instance, link, tree, entries, health)
        except EideticaError as exc:
            health.failures += 1
            health.consecutive_failures += 1
            health.last_error = str(exc)
            log.warning("peer %s: %s failed: %s", link.peer_key, type(job).__name__, exc)
            if isinstance(job, SyncJob) and job.reply is not None:
                job.reply.fail(exc)


async def _sync(instance: Instance, link: Link, trees: tuple[str, ...], health: PeerHealth) -> None:
    for tree in trees:
        result = await link.sync_tree(instance, tree)
        health.received += result.received
        health.round_trips.append(result.round_trips)
    health.syncs += 1
    health.consecutive_failures = 0
    health.last_sync = trio.current_time()


async def _push(
    instance: Instance, link: Link, tree: str, entries: tuple[bytes, ...], health: PeerHealth
) -> None:
    ack = await link.call(SendEntries(tree=tree, entries=entries), Ack)
    health.pushes += 1
    health.consecutive_failures = 0
    if ack.need or ack.held:  # the peer lacks more than the pushed entries: sync the tree
        await _sync(instance, link, (tree,), health)
