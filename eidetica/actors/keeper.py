"""Crash supervision: an actor that crashes is restarted with backoff, and one that
keeps crashing is reported and left down instead of looping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("eidetica.actors.supervisor")

BACKOFF_MAX = 30.0
"""The longest wait, in seconds, before a crashed actor is started again."""


async def keep_running(
    name: str,
    actor: Callable[[], Awaitable[None]],
    *,
    max_restarts: int,
    crashed: Callable[[str], None],
    restarted: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``actor``; restart it after 1, 2, 4... seconds each time it crashes, and
    after ``max_restarts`` crashes tell ``crashed`` its name and return. ``restarted``
    hears its name at each restart (for metrics)."""
    task_status.started()
    for crashes in range(max_restarts + 1):
        try:
            await actor()
            return
        except Exception:
            log.exception("actor %s crashed (%d times)", name, crashes + 1)
        if crashes < max_restarts:
            await trio.sleep(min(2.0**crashes, BACKOFF_MAX))
            if restarted is not None:
                restarted(name)
    log.error("actor %s keeps crashing; left down", name)
    crashed(name)
