"""The peer actor: one per peer, owning that peer's link and doing its requests in order.

It also keeps the peer's circuit breaker (its rules are plain state in
``engine/breaker.py``): after ``failure_threshold`` failures in a row it stops sending
for ``cooldown`` seconds, failing jobs at once (a push then waits for the breaker in
the retry queue); then the next job is tried (half-open), which closes the breaker if
it succeeds and opens it again if not.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

import trio

from eidetica.actors import commands as cmd
from eidetica.actors.engine.breaker import Breaker, BreakerConfig
from eidetica.actors.link import Link, RoundResult
from eidetica.actors.reply import Reply
from eidetica.actors.retry import RetryItem
from eidetica.errors import EideticaError, RemoteError, SyncError
from eidetica.protocol.messages import Ack, SendEntries
from eidetica.storage.instance import Instance

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncJob:
    """Sync these trees fully, both ways, then answer."""

    trees: tuple[str, ...]
    reply: Reply[None] | None
    common: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per tree, the tips both sides held after the last sync (the cursor)."""


@dataclass(frozen=True, slots=True)
class PushJob:
    """Offer these entries of a tree to the peer (a commit, forwarded entries, a retry)."""

    tree: str
    ids: tuple[str, ...]
    entries: tuple[bytes, ...]
    retry: RetryItem | None = None


@dataclass(frozen=True, slots=True)
class ProbeJob:
    """Check the peer answers, with a fresh handshake (the connection check)."""


Job = SyncJob | PushJob | ProbeJob


@dataclass
class PeerHealth:
    """What the peer actor has seen of its peer (read by status snapshots)."""

    syncs: int = 0
    failures: int = 0
    pushes: int = 0
    probes: int = 0
    last_sync: float | None = None
    last_error: str | None = None
    received: int = 0
    circuit: Breaker = field(default_factory=Breaker)
    attempts: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    """When recent requests were tried (trio time)."""

    @property
    def breaker(self) -> str:
        """The breaker's state now, by name (for status)."""
        return self.circuit.state(trio.current_time()).value


async def run_peer(
    instance: Instance,
    link: Link,
    jobs: trio.MemoryReceiveChannel[Job],
    *,
    report: trio.MemorySendChannel[cmd.Command],
    health: PeerHealth,
    breaker: BreakerConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Do the peer's jobs one at a time, in order, until the inbox closes. Jobs left
    when it stops get their callers an error, never silence."""
    task_status.started()
    async with report:
        try:
            async for job in jobs:
                await _serve_one(instance, link, job, report=report, health=health, breaker=breaker)
        finally:
            _fail_remaining(jobs)


def _fail_remaining(jobs: trio.MemoryReceiveChannel[Job]) -> None:
    """Answer the callers of jobs this actor will never do (it stopped)."""
    while True:
        try:
            job = jobs.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        if isinstance(job, SyncJob) and job.reply is not None:
            job.reply.fail(SyncError("the peer actor stopped"))


async def _serve_one(
    instance: Instance,
    link: Link,
    job: Job,
    *,
    report: trio.MemorySendChannel[cmd.Command],
    health: PeerHealth,
    breaker: BreakerConfig,
) -> None:
    """Do one job, keeping the breaker's count."""
    if health.circuit.refuses(trio.current_time()):
        _refuse_while_open(link, job, report, until=health.circuit.open_until or 0.0)
        return
    try:
        health.attempts.append(trio.current_time())
        await _do(instance, link, job, health, report)
    except EideticaError as exc:
        _failed(link, job, exc, health=health, breaker=breaker, report=report)
    except Exception as exc:
        if isinstance(job, SyncJob) and job.reply is not None:
            job.reply.fail(SyncError(f"peer actor crashed: {exc!r}"))
        raise  # the supervisor restarts this actor
    else:
        health.circuit.succeeded()


async def _do(
    instance: Instance,
    link: Link,
    job: Job,
    health: PeerHealth,
    report: trio.MemorySendChannel[cmd.Command],
) -> None:
    try:
        await _run(instance, link, job, health, report)
    except RemoteError as exc:
        if exc.code != "unauthenticated":
            raise
        # The peer forgot our session (it restarted): prove ourselves again, once.
        await link.handshake(instance, expected_key=link.peer_key)
        await _run(instance, link, job, health, report)


async def _run(
    instance: Instance,
    link: Link,
    job: Job,
    health: PeerHealth,
    report: trio.MemorySendChannel[cmd.Command],
) -> None:
    match job:
        case SyncJob():
            common = dict(job.common)
            for tree in job.trees:
                started = trio.current_time()
                try:
                    result = await link.sync_tree(instance, tree, common=common.get(tree, ()))
                except EideticaError:
                    _tell(report, link, tree, ok=False, started=started)
                    raise
                health.received += result.received
                _tell(report, link, tree, ok=result.complete, started=started, result=result)
                if result.stored:  # pulled entries go on to the tree's other peers too
                    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                        report.send_nowait(
                            cmd.EntriesReceived(tree, result.stored, link.peer_key or "")
                        )
            health.syncs += 1
            health.last_sync = trio.current_time()
            if job.reply is not None:
                job.reply.set(None)
        case PushJob():
            ack = await link.call(SendEntries(tree=job.tree, entries=job.entries), Ack)
            health.pushes += 1
            if ack.need or ack.held:  # the peer lacks more than we pushed: sync the tree
                await link.sync_tree(instance, job.tree)
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                report.send_nowait(cmd.Pushed(link.peer_key or "", job.tree, len(job.entries)))
                if job.retry is not None:  # a retried push went through: forget its record
                    report.send_nowait(cmd.RetryEnded(job.retry, delivered=True))
        case ProbeJob():
            await link.handshake(instance, expected_key=link.peer_key)
            health.probes += 1


def _refuse_while_open(
    link: Link, job: Job, report: trio.MemorySendChannel[cmd.Command], *, until: float
) -> None:
    """Fail a job at once while the breaker is open, without extending the cooldown:
    the job says nothing new about the peer. A push waits for the breaker to close
    (``until``) before it is tried again, and the refusal counts as one of its
    attempts, so a peer that stays away never makes a push come back every few
    seconds, and the push is dropped in the end like any other."""
    error = SyncError(f"peer {link.peer_key} is failing; breaker open")
    match job:
        case SyncJob(reply=reply) if reply is not None:
            reply.fail(error)
        case PushJob():
            item = job.retry or RetryItem(uuid.uuid4().hex, link.peer_key or "", job.tree, job.ids)
            item = replace(item, not_before=until)
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                report.send_nowait(cmd.PushFailed(item))
        case _:
            pass


def _tell(
    report: trio.MemorySendChannel[cmd.Command],
    link: Link,
    tree: str,
    *,
    ok: bool,
    started: float,
    result: RoundResult | None = None,
) -> None:
    """Tell the supervisor how a tree's sync went, for its cursor and metadata."""
    done = cmd.SyncDone(
        peer=link.peer_key or "",
        tree=tree,
        ok=ok,
        tips=result.tips if result is not None else (),
        received=result.received if result is not None else 0,
        duration=trio.current_time() - started,
    )
    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
        report.send_nowait(done)


def _failed(
    link: Link,
    job: Job,
    error: EideticaError,
    *,
    health: PeerHealth,
    breaker: BreakerConfig,
    report: trio.MemorySendChannel[cmd.Command],
) -> None:
    health.failures += 1
    health.last_error = str(error)
    health.circuit.failed(trio.current_time(), breaker)
    log.warning("peer %s: %s failed: %s", link.peer_key, type(job).__name__, error)
    match job:
        case SyncJob(reply=reply) if reply is not None:
            reply.fail(error)
        case PushJob():
            item = job.retry or RetryItem(uuid.uuid4().hex, link.peer_key or "", job.tree, job.ids)
            # If the report cannot be posted, the periodic sync finds what this carried.
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                report.send_nowait(cmd.PushFailed(item))
        case _:
            pass
