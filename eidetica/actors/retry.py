"""The retry queue and its actor: failed pushes wait, back off, and try again.

A failed push waits 2^attempts seconds (capped at 64, stretched by up to
``jitter``), then goes back to the supervisor to be pushed again. After
``max_attempts`` it is dropped with a logged reason: by then the periodic sync is
the better repair. The queue logic is plain code (:class:`RetryQueue`); the actor
only adds the clock and the inbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from eidetica.actors.engine.retries import (
    Deferred,
    ForgetPeer,
    RetryItem,
    RetryMessage,
    RetryQueue,
    RetrySnapshot,
)

__all__ = ["ForgetPeer", "RetryItem", "RetryMessage", "RetryQueue", "RetrySnapshot", "run_retry"]

Due = Callable[[RetryItem], Awaitable[None]]
Publish = Callable[[RetrySnapshot], None]


async def run_retry(
    queue: RetryQueue,
    inbox: trio.MemoryReceiveChannel[RetryMessage],
    due: Due,
    *,
    dropped: Due,
    publish: Publish,
    sweep: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own ``queue`` from now on: take failed items and peers to forget from ``inbox``;
    hand each item to ``due`` when its time comes, or to ``dropped`` once it has used up
    its attempts; ``publish`` a snapshot after every change, for status.

    It wakes at the earliest due time, and at least every ``sweep`` seconds.
    """
    task_status.started()
    publish(queue.snapshot())
    while True:
        now = trio.current_time()
        for item in queue.take_due(now):
            await due(item)
        publish(queue.snapshot())
        next_due = queue.next_due()
        deadline = now + sweep if next_due is None else min(next_due, now + sweep)
        with trio.move_on_at(deadline):
            try:
                message = await inbox.receive()
            except trio.EndOfChannel:
                return
            match message:
                case ForgetPeer(peer):
                    queue.forget_peer(peer)
                case Deferred(item, until):
                    queue.defer(item, until)
                case RetryItem() if queue.failed(message, trio.current_time()) is None:
                    await dropped(message)
            publish(queue.snapshot())
