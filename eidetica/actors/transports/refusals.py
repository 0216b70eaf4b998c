"""Logging refusals so that a flood of them cannot flood the log.

Every refused connection or request gets one logged reason, which is what an operator
needs to see an attack and its source, but a client that reconnects as fast as it is
refused would otherwise write thousands of lines a second. :class:`RefusalLog` logs
the first few refusals of each kind in every window one by one, and folds the rest
into one line saying how many there were, written with the next refusal of that kind
after the window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 10.0
"""Seconds of one window."""

BURST = 10
"""Refusals of one kind logged one by one in a window."""

MAX_KINDS = 256
"""Kinds tracked at once; kinds are chosen by our code, so this is a safety net."""


@dataclass
class _Window:
    began: float
    logged: int = 0
    folded: int = 0


class RefusalLog:
    """Warnings about refusals, at most :data:`BURST` lines per kind per :data:`WINDOW`."""

    def __init__(
        self, logger: logging.Logger, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` as a refusal of ``kind``, unless this kind has had
        its lines for the window: then count it."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.began >= WINDOW:
            if window is not None and window.folded:
                self._logger.warning(
                    "... and %d more refusals (%s) in %.0f s", window.folded, kind, WINDOW
                )
            if len(self._windows) >= MAX_KINDS:
                self._windows.clear()
            window = self._windows[kind] = _Window(began=now)
        if window.logged < BURST:
            window.logged += 1
            self._logger.warning(message, *args)
        else:
            window.folded += 1
