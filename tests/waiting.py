"""Waiting on conditions, never on time: each helper wakes when the thing it watches
changes, and the caller bounds the wait (``trio.fail_after``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

import eidetica
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.actors.watching import Watching


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def woken(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(woken)


async def settle(tree: eidetica.Tree, other: eidetica.Tree) -> None:
    """Wait until both hold the same tips, waking whenever either stores entries."""
    while True:
        instances = (tree.instance, other.instance)
        seen = [instance.version for instance in instances]
        if await tree.tips() == await other.tips():
            return
        await first_of(*map(lambda i, v: partial(i.changed, v), instances, seen))


async def stored(instance: eidetica.Instance, entry_id: str) -> None:
    """Wait until ``instance`` holds the entry ``entry_id``."""
    while True:
        since = instance.version
        if instance.backend.get(entry_id) is not None:
            return
        await instance.changed(since)


async def links_settle(*transports: WebSocketTransport, count: int = 1) -> None:
    """Wait until each transport has exactly ``count`` open links."""
    while True:
        seen = [transport.link_version for transport in transports]
        if all(len(transport.links()) == count for transport in transports):
            return
        await first_of(*map(lambda t, v: partial(t.link_changed, v), transports, seen))


async def until(check: Callable[[], Awaitable[bool]], every: float = 0.01) -> None:
    """Ask ``check`` every ``every`` seconds until it says yes: for a condition of
    another node's engine that nothing in this process signals (its status)."""
    while True:
        if await check():
            return
        await trio.sleep(every)


async def watches_held(watching: Watching, count: int) -> None:
    """Wait until ``watching`` holds exactly ``count`` watches."""
    while True:
        since = watching.version
        if watching.held == count:
            return
        await watching.changed(since)
