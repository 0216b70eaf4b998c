"""The shell's hand on the peer actors: start and stop them, hand them links, jobs
and dials. Each peer actor runs in its own cancel scope, with its job loop and its
redials in one nursery, so stopping a peer stops everything it was doing."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import trio

import eidetica.events as news
from eidetica.actors import commands as cmd
from eidetica.actors.config import SyncConfig
from eidetica.actors.dialer import dial
from eidetica.actors.engine.effects import Dial
from eidetica.actors.engine.jobs import Job, PushJob, SyncJob
from eidetica.actors.engine.policy import TreePolicy
from eidetica.actors.engine.retries import RetryItem
from eidetica.actors.engine.status import Health
from eidetica.actors.link import Link
from eidetica.actors.peer import PeerActor, fail_remaining
from eidetica.actors.transports.routes import Routes
from eidetica.errors import SyncError
from eidetica.storage.instance import Instance

Keep = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]
"""Runs an actor under crash supervision, by name."""


@dataclass
class _Handle:
    """One peer actor: its scope, its nursery, its inbox and the actor."""

    scope: trio.CancelScope
    nursery: trio.Nursery
    jobs: trio.MemorySendChannel[Job]
    actor: PeerActor
    address: str | None = None
    """The link it was handed last."""
    dial: trio.CancelScope | None = None
    """Its pending redial."""
    dropped: int = 0
    """Jobs it could not take (inbox full, or the actor left down)."""
    finished: trio.Event = field(default_factory=trio.Event)
    """Its job loop has ended: its inbox closed and the job at hand was done."""


@dataclass
class PeerActors:
    instance: Instance
    config: SyncConfig
    routes: Routes
    inbox: trio.MemorySendChannel[cmd.Command]
    """The supervisor's: reports and dial outcomes go there."""
    keep: Keep
    policy: TreePolicy
    defer: Callable[[RetryItem], None]
    """Hands a due push the peer was too busy to take back to the retry actor."""
    trees: Callable[[str], Collection[str]]
    """The trees the engine syncs with a peer now (its published view)."""
    announce: Callable[[news.Event], None] = lambda event: None
    """Publishes the actors' events (the event bus)."""
    handles: dict[str, _Handle] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)
    """What each actor published last (each entry replaced whole, never changed)."""

    async def start(self, nursery: trio.Nursery, peer: str) -> None:
        self.handles[peer] = await nursery.start(self._run, peer)

    async def _run(
        self, key: str, *, task_status: trio.TaskStatus[_Handle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        jobs, job_inbox = trio.open_memory_channel[Job](self.config.peer_inbox_size)
        report = self.inbox.clone()
        actor = PeerActor(
            self.instance,
            key,
            report,
            self.config.breaker,
            self.routes.close,
            self.policy,
            publish=self.health.__setitem__,
            trees=self.trees,
            announce=self.announce,
        )
        with trio.CancelScope() as scope, report:
            async with trio.open_nursery() as nursery:
                handle = _Handle(scope, nursery, jobs, actor)
                task_status.started(handle)
                try:
                    await self.keep(f"peer {key}", lambda: actor.run(job_inbox))
                finally:  # ended, left down, or stopped: no job is left unanswered
                    handle.finished.set()
                    jobs.close()
                    fail_remaining(job_inbox, self.inbox)
                await trio.sleep_forever()  # left down: its nursery stays for dials

    def stop(self, peer: str, close_link: bool) -> None:
        """Cancel the peer's actor; its callers hear of the jobs it never ran."""
        handle = self.handles.pop(peer, None)
        self.health.pop(peer, None)
        if handle is None:
            return
        handle.jobs.close()
        handle.scope.cancel()
        if close_link and handle.address is not None:
            self.routes.close(handle.address)

    def stop_all(self) -> None:
        """Take no more jobs: each actor finishes the one at hand, and the callers of
        the others hear that they will not run."""
        for handle in self.handles.values():
            handle.actor.draining = True
            handle.jobs.close()

    async def finished(self) -> None:
        """Wait until every actor's job loop has ended (after :meth:`stop_all`)."""
        for handle in list(self.handles.values()):
            if handle.scope.cancel_called:
                continue  # stopped meanwhile: its job loop is being cancelled
            await handle.finished.wait()

    def use_link(self, peer: str, link: Link, close_previous: bool) -> None:
        handle = self.handles[peer]
        handle.address = link.address
        handle.actor.hand(link, close_previous)

    def queue(self, peer: str, job: Job) -> None:
        """Hand a job on; one that finds the inbox full or closed fails its caller,
        and a retried push goes back to the retry queue rather than being lost."""
        handle = self.handles[peer]
        try:
            handle.jobs.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            handle.dropped += 1
            why = "busy; try again" if isinstance(exc, trio.WouldBlock) else "down"
            if isinstance(job, SyncJob) and job.reply is not None:
                job.reply.fail(SyncError(f"peer {peer} is {why}"))
            if isinstance(job, PushJob) and job.retry is not None:
                if isinstance(exc, trio.WouldBlock):  # busy: due again soon, no attempt spent
                    self.defer(job.retry)
                else:  # left down: an attempt spent, so it is dropped in the end
                    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                        self.inbox.send_nowait(cmd.PushFailed(job.retry))

    def dial(self, nursery: trio.Nursery, order: Dial) -> None:
        """Run a dial: a peer's own redial in its actor's nursery (replacing the one
        pending there), any other in ``nursery``."""
        scope = trio.CancelScope()
        handle = self.handles.get(order.peer or "") if order.owned else None
        if handle is not None:
            if handle.dial is not None:
                handle.dial.cancel()
            handle.dial = scope
            nursery = handle.nursery
        nursery.start_soon(self._dial, order, scope)

    def stop_dial(self, peer: str) -> None:
        handle = self.handles.get(peer)
        if handle is not None and handle.dial is not None:
            handle.dial.cancel()

    async def _dial(self, order: Dial, scope: trio.CancelScope) -> None:
        with scope:
            outcome = await dial(self.instance, self.routes.transport, order, self.routes.is_open)
            try:
                await self.inbox.send(outcome)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                if order.reply is not None:
                    order.reply.fail(SyncError("the sync engine stopped"))

    def dropped(self) -> dict[str, int]:
        return {key: handle.dropped for key, handle in self.handles.items()}
