"""Showing a sync's progress to a person: a live bar on a terminal (rich), plain
lines at most once a second otherwise (a log, a pipe), both on the given stream.

It follows the node's events (``sync.events()``) for one tree, so it shows what
the engine really received, page by page, and the total the peer said it would send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

import eidetica.events as news

if TYPE_CHECKING:
    from eidetica.actors.bus import Subscription
    from eidetica.actors.sync import Sync

LINE_EVERY = 1.0
"""Seconds between two plain progress lines."""


class _View(Protocol):
    def page(self, entries: int, size: int, expected: int | None) -> None: ...
    def done(self, event: news.SyncFinished) -> None: ...
    def close(self) -> None: ...


@asynccontextmanager
async def showing_progress(sync: Sync, tree: str, stream: TextIO | None) -> AsyncIterator[None]:
    """Show the progress of syncs of ``tree`` on ``stream`` (None: show nothing) for
    the duration of the block."""
    if stream is None:
        yield
        return
    view: _View = _Bar(stream) if stream.isatty() else _Lines(stream, trio.current_time)
    try:
        async with sync.events() as events, trio.open_nursery() as nursery:
            nursery.start_soon(_follow, events, tree, view)
            yield
            nursery.cancel_scope.cancel()
    finally:
        view.close()


async def _follow(events: Subscription, tree: str, view: _View) -> None:
    async for event in events:
        match event:
            case news.SyncProgress(tree=t, entries=entries, bytes=size, expected=expected):
                if t == tree:
                    view.page(entries, size, expected)
            case news.SyncFinished(tree=t) if t == tree and event.received:
                view.done(event)
            case _:
                pass


def _size(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


class _Lines:
    """One line per second at most, and one when a sync ends."""

    def __init__(self, stream: TextIO, clock: Callable[[], float]) -> None:
        self._stream = stream
        self._clock = clock
        self._last = -LINE_EVERY

    def page(self, entries: int, size: int, expected: int | None) -> None:
        now = self._clock()
        if now - self._last < LINE_EVERY:
            return
        self._last = now
        of = f" of {expected:,}" if expected is not None else ""
        print(f"received {entries:,}{of} entries ({_size(size)})", file=self._stream, flush=True)

    def done(self, event: news.SyncFinished) -> None:
        print(
            f"received {event.received:,} entries ({_size(event.bytes)}) in {event.seconds:.1f} s",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        pass


class _Bar:
    """A rich progress bar, drawn on the terminal while the sync pulls."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task = self._progress.add_task("entries", total=None, visible=False)
        self._progress.start()

    def page(self, entries: int, size: int, expected: int | None) -> None:
        description = f"received {_size(size)}"
        self._progress.update(
            self._task, completed=entries, total=expected, description=description, visible=True
        )

    def done(self, event: news.SyncFinished) -> None:
        self._progress.update(
            self._task,
            completed=event.received,
            total=event.received,
            description=f"received {_size(event.bytes)}",
            visible=True,
        )

    def close(self) -> None:
        self._progress.stop()
