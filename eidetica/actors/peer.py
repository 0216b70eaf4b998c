"""The peer actor: one per peer, doing that peer's jobs in order over its link.

The shell hands it links (:meth:`PeerActor.hand`) and jobs (its inbox); it moves to
the newest link between jobs, closing the one it leaves if we dialled it, so jobs
queued before a link changed go out on the new one. It
reports what each job did by messages, and publishes its :class:`Health` after each.

It keeps the peer's circuit breaker (its rules are plain state in
``engine/breaker.py``): after ``failure_threshold`` failures in a row it stops sending
for ``cooldown`` seconds, failing jobs at once (a push then waits for the breaker in
the retry queue); then the next job is tried (half-open), which closes the breaker if
it succeeds and opens it again if not.

A relationship alone never leaks a tree: before syncing or pushing a tree, the actor
checks that the tree's settings let the peer's proven key read it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial

import trio

import eidetica.events as news
from eidetica.actors import commands as cmd
from eidetica.actors.engine.breaker import Breaker, BreakerConfig
from eidetica.actors.engine.jobs import Job, ProbeJob, PushJob, SyncJob
from eidetica.actors.engine.policy import TreePolicy
from eidetica.actors.engine.retries import RetryItem
from eidetica.actors.engine.status import Health
from eidetica.actors.link import Link, RoundResult
from eidetica.actors.watch import run_watch, watched
from eidetica.errors import EideticaError, RemoteError, SyncError, TreeNotFound
from eidetica.protocol.auth import Permission
from eidetica.protocol.messages import Ack, SendEntries
from eidetica.storage.instance import Instance

log = logging.getLogger(__name__)

__all__ = ["Job", "NewLink", "PeerActor", "ProbeJob", "PushJob", "SyncJob", "fail_remaining"]


@dataclass(frozen=True, slots=True)
class NewLink:
    """Use ``link`` from the next job on; close the one in use if ``close_previous``."""

    link: Link
    close_previous: bool


Report = trio.MemorySendChannel[cmd.Command]


@dataclass
class PeerActor:
    """One peer's job loop and what it has seen of the peer. Its state outlives a
    crash of :meth:`run`, which the supervisor restarts."""

    instance: Instance
    key: str
    report: Report
    breaker_config: BreakerConfig
    close: Callable[[str], None]
    """Closes a two-way link we dialled, by address."""
    policy: TreePolicy = field(default_factory=TreePolicy)
    """Counts what we pull into trees a peer brought against its quota."""
    publish: Callable[[str, Health], None] = lambda key, health: None
    """Takes the actor's health after each job: a snapshot, read for status."""
    trees: Callable[[str], Collection[str]] = lambda key: ()
    """The trees this node syncs with the peer now (for the watch of an HTTP link)."""
    announce: Callable[[news.Event], None] = lambda event: None
    """Publishes what the actor does for the node's users (the event bus)."""
    link: Link | None = None
    breaker: Breaker = field(default_factory=Breaker)
    health: Health = field(default_factory=Health)
    _attempts: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    _next: NewLink | None = None
    _busy: bool = False
    _handed_one: trio.Event = field(default_factory=trio.Event)
    """Set once a link was handed over: the engine queues jobs only behind one."""
    _nursery: trio.Nursery | None = None
    _watch: trio.CancelScope | None = None
    """The watch kept open over the link in use, if its transport needs one."""

    draining: bool = False
    """Stopping: the job at hand finishes, the rest are failed at once."""

    async def run(self, jobs: trio.MemoryReceiveChannel[Job]) -> None:
        """Do the jobs one at a time, in order, until the inbox closes (or the actor
        drains), each on the link handed over last. Jobs left when it stops get their
        callers an error, never silence."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._rewatch()  # after a crash, the link kept its watch
            try:
                async for job in jobs:
                    self._busy = True
                    if self.link is None and self._next is None:
                        await self._handed_one.wait()  # the engine queues jobs behind one
                    self._move()
                    await self._serve_one(job)
                    self._busy = False
                    self._move()
                    self._publish()
                    if self.draining:
                        break
            finally:
                self._nursery = None  # a link handed over from now on waits for a run
                fail_remaining(jobs, self.report)
                nursery.cancel_scope.cancel()

    def hand(self, link: Link, close_previous: bool) -> None:
        """Use ``link`` from the next job on (now, if none is running). Called by the
        shell with no checkpoint between this and the jobs it queues after, so those
        go on this link. A link handed over before and never used is closed if this
        one says so; the link in use is closed as the skipped one said."""
        skipped, self._next = self._next, NewLink(link, close_previous)
        self._handed_one.set()
        if skipped is not None:
            if close_previous and skipped.link.address != link.address:
                self.close(skipped.link.address)
            self._next = NewLink(link, skipped.close_previous)
        if not self._busy:
            self._move()

    def _move(self) -> None:
        """Move to the link handed over last, closing the one left if we dialled it
        (and it is not the same connection: links are named by address)."""
        new, self._next = self._next, None
        if new is None:
            return
        old = self.link
        if old is not None and new.close_previous and old.address != new.link.address:
            self.close(old.address)
        self.link = new.link
        self._rewatch()

    def _rewatch(self) -> None:
        """Keep one watch open over the link in use when its transport cannot carry
        the peer's pushes back (HTTP): the peer's news then comes as its answers."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        link = self.link
        if link is None or self._nursery is None or not watched(link.transport):
            return
        self._watch = scope = trio.CancelScope()
        self._nursery.start_soon(self._watching, link, scope)

    async def _watching(self, link: Link, scope: trio.CancelScope) -> None:
        with scope:
            trees = partial(self.trees, self.key)
            await run_watch(self.instance, link, trees, self.report.clone())

    def _publish(self) -> None:
        self.health = replace(
            self.health, breaker=replace(self.breaker), attempts=tuple(self._attempts)
        )
        self.publish(self.key, self.health)

    async def _serve_one(self, job: Job) -> None:
        """Do one job, keeping the breaker's count."""
        link = self.link
        if link is None:  # the engine queues jobs only behind a link: cannot happen
            error = SyncError(f"peer {self.key} has no link")
            _refuse(job, error, self.report, self.key, self.instance.randomness.token_hex)
            return
        now = trio.current_time()
        if self.breaker.refuses(now):
            error = SyncError(f"peer {self.key} is failing; breaker open")
            until = self.breaker.open_until or 0.0
            _refuse(
                job,
                error,
                self.report,
                self.key,
                self.instance.randomness.token_hex,
                not_before=until,
            )
            return
        try:
            self._attempts.append(now)
            await self._do(link, job)
        except EideticaError as exc:
            self._failed(job, exc)
        except BaseException as exc:  # a bug (the actor restarts) or a cancellation
            if isinstance(job, SyncJob) and job.reply is not None:
                crashed = isinstance(exc, Exception)
                job.reply.fail(
                    SyncError(
                        f"peer actor crashed: {exc!r}" if crashed else "the peer actor stopped"
                    )
                )
            raise
        else:
            self.breaker.succeeded()

    def _failed(self, job: Job, error: EideticaError) -> None:
        self.health = replace(self.health, failures=self.health.failures + 1, last_error=str(error))
        self.breaker.failed(trio.current_time(), self.breaker_config)
        log.warning("peer %s: %s failed: %s", self.key, type(job).__name__, error)
        _refuse(job, error, self.report, self.key, self.instance.randomness.token_hex)

    async def _do(self, link: Link, job: Job) -> None:
        try:
            await self._run(link, job)
        except RemoteError as exc:
            if exc.code != "unauthenticated":
                raise
            # The peer forgot our session (it restarted): prove ourselves again, once.
            await link.handshake(self.instance, expected_key=self.key)
            await self._run(link, job)

    async def _run(self, link: Link, job: Job) -> None:
        match job:
            case SyncJob():
                await self._sync(link, job)
            case PushJob():
                await self._push(link, job)
            case ProbeJob():
                await link.handshake(self.instance, expected_key=self.key)
                self.health = replace(self.health, probes=self.health.probes + 1)

    async def _sync(self, link: Link, job: SyncJob) -> None:
        common = dict(job.common)
        for tree in job.trees:
            if not await self._readable(tree) or self.policy.over(self.key, tree):
                continue
            started = trio.current_time()
            self.announce(news.SyncStarted(self.key, tree))
            progress = partial(self._progress, tree)
            try:
                result = await link.sync_tree(
                    self.instance, tree, common=common.get(tree, ()), progress=progress
                )
            except EideticaError as exc:
                self._tell(tree, ok=False, started=started)
                self.announce(news.SyncFailed(self.key, tree, str(exc)))
                raise
            except BaseException:  # a bug, or the actor stopping: the sync ended too
                self.announce(news.SyncFailed(self.key, tree, "the peer actor stopped"))
                raise
            self._announce_done(result, started)
            self.health = replace(self.health, received=self.health.received + result.received)
            self._count_pulled(tree, result.stored)
            self._tell(tree, ok=result.complete, started=started, result=result)
            if result.stored:  # pulled entries go on to the tree's other peers too
                self._send(cmd.EntriesReceived(tree, result.stored, self.key))
        self.health = replace(
            self.health, syncs=self.health.syncs + 1, last_sync=trio.current_time()
        )
        if job.reply is not None:
            job.reply.set(None)

    def _progress(self, tree: str, entries: int, size: int, expected: int | None) -> None:
        self.announce(news.SyncProgress(self.key, tree, entries, size, expected))

    def _announce_done(self, result: RoundResult, started: float) -> None:
        if result.sent:
            self.announce(news.EntriesSent(self.key, result.tree, result.sent, result.bytes_sent))
        finished = news.SyncFinished(
            peer=self.key,
            tree=result.tree,
            received=result.received,
            bytes=result.bytes_received,
            sent=result.sent,
            round_trips=result.round_trips,
            seconds=trio.current_time() - started,
            complete=result.complete,
            tips=result.tips,
            at=self.instance.wall_clock(),
        )
        self.announce(finished)

    def _count_pulled(self, tree: str, stored: tuple[str, ...]) -> None:
        if stored and not self.policy.chosen_only:
            entries = (self.instance.backend.get(entry_id) for entry_id in stored)
            self.policy.pulled(self.key, tree, sum(len(e.raw) for e in entries if e))

    async def _push(self, link: Link, job: PushJob) -> None:
        if not await self._readable(job.tree):
            if job.retry is not None:  # nowhere to go: forget its record
                self._send(cmd.RetryEnded(job.retry, delivered=False))
            return
        stored = [self.instance.backend.get(entry_id) for entry_id in job.ids]
        raw = tuple(entry.raw for entry in stored if entry is not None)
        ack = await link.call(SendEntries(tree=job.tree, entries=raw), Ack)
        self.health = replace(self.health, pushes=self.health.pushes + 1)
        self.announce(news.EntriesSent(self.key, job.tree, len(raw), sum(map(len, raw))))
        took_all = not (ack.need or ack.held or ack.rejected) and len(raw) == len(job.ids)
        if ack.need or ack.held:  # the peer lacks more than we pushed: sync the tree
            await link.sync_tree(self.instance, job.tree)
        head = job.ids[-1] if took_all and job.ids else ""
        self._send(cmd.Pushed(self.key, job.tree, len(raw), head))
        if job.retry is not None:  # a retried push went through: forget its record
            self._send(cmd.RetryEnded(job.retry, delivered=True))

    async def _readable(self, tree: str) -> bool:
        """Whether the tree's settings let this peer read it (a tree we do not hold
        has nothing to leak: syncing can only pull it in)."""
        try:
            level = await (await self.instance.open_tree(tree)).permission(self.key)
        except TreeNotFound:
            return True
        return level is not None and level >= Permission.READ

    def _tell(
        self, tree: str, *, ok: bool, started: float, result: RoundResult | None = None
    ) -> None:
        """Tell the engine how a tree's sync went, for its cursor and records."""
        self._send(
            cmd.SyncDone(
                peer=self.key,
                tree=tree,
                ok=ok,
                tips=result.tips if result is not None else (),
                received=result.received if result is not None else 0,
                duration=trio.current_time() - started,
                at=self.instance.wall_clock(),
            )
        )

    def _send(self, message: cmd.Command) -> None:
        """Post a report; if it cannot be posted, the periodic sync finds what it said."""
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self.report.send_nowait(message)


def _refuse(
    job: Job,
    error: EideticaError,
    report: Report,
    peer: str,
    retry_id: Callable[[], str],
    *,
    not_before: float = 0.0,
) -> None:
    """Fail a job's caller, or hand a push to the retry queue. A push refused while
    the breaker is open waits for it to close (``not_before``) and the refusal counts
    as one of its attempts, so a peer that stays away never makes a push come back
    every few seconds, and the push is dropped in the end like any other. A push
    failed for the first time is named by ``retry_id`` (the node's randomness)."""
    match job:
        case SyncJob(reply=reply) if reply is not None:
            reply.fail(error)
        case PushJob():
            item = job.retry or RetryItem(retry_id(), peer, job.tree, job.ids)
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
            ):
                report.send_nowait(cmd.PushFailed(replace(item, not_before=not_before)))
        case _:
            pass


def fail_remaining(jobs: trio.MemoryReceiveChannel[Job], report: Report) -> None:
    """Answer the callers of jobs this actor will never do (it stopped), and hand
    retried pushes back to the retry queue (an attempt spent), so none is lost from
    it until a restart."""
    while True:
        try:
            job = jobs.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        if isinstance(job, SyncJob) and job.reply is not None:
            job.reply.fail(SyncError("the peer actor stopped"))
        if isinstance(job, PushJob) and job.retry is not None:
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
            ):
                report.send_nowait(cmd.PushFailed(job.retry))
