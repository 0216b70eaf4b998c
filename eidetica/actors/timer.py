"""The timer actor: tells the supervisor when periodic work is due."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import trio

from eidetica.actors.commands import Command

Schedule = tuple[float, Callable[[], Command]]
"""Every so many seconds of trio time, send the command this makes."""


async def run_timer(
    inbox: trio.MemorySendChannel[Command],
    schedules: Sequence[Schedule],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send each schedule's command every period (periodic sync, connection checks)."""
    start = trio.current_time()
    due = [start + period for period, _ in schedules]
    task_status.started()
    async with inbox:
        while True:
            soonest = min(range(len(schedules)), key=due.__getitem__)
            await trio.sleep_until(due[soonest])
            period, make = schedules[soonest]
            due[soonest] += period
            with contextlib.suppress(trio.WouldBlock):  # a full inbox: the next tick will do
                inbox.send_nowait(make())
