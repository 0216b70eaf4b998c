"""The timer actor: tells the supervisor when periodic work is due."""

from __future__ import annotations

import contextlib

import trio

from eidetica.actors.commands import Command, SyncAll


async def run_timer(
    inbox: trio.MemorySendChannel[Command],
    period: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``period`` seconds of trio time, ask for a sync with every peer."""
    task_status.started()
    async with inbox:
        while True:
            await trio.sleep(period)
            with contextlib.suppress(trio.WouldBlock):  # a full inbox: the next tick will do
                inbox.send_nowait(SyncAll())
