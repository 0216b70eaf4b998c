"""The peer project for comparison: pycrdt (Y-CRDT in Python) synced by pycrdt-websocket.

Eidetica's own figures (``bench/transports.py``, ``bench/latency.py``) mean more next
to those of a library that does a similar job; this benchmark measures pycrdt, as
pycrdt-websocket's documentation sets it up, in the same two ways. The server is
pycrdt-websocket's ``WebsocketServer`` behind its ``ASGIServer``, run by hypercorn on
127.0.0.1 (port 0); a client is a pycrdt ``Doc`` kept in sync by pycrdt's ``Provider``
over an httpx-ws WebSocket (pycrdt-websocket's ``HttpxWebsocket``). All of it runs on
trio, in one process, through anyio. No store: the room's document lives in memory.

*Initial sync.* The server's room holds a document with ``writes`` small map writes
(``ymap[f"k{i}"] = i``, each its own transaction), made on the room's own document
before any client connects, outside the timing. The timed part runs from just before
a fresh client dials the room until its replica's map holds all ``writes`` keys:
the WebSocket handshake, Y-sync's two steps both ways, and applying the state. The
httpx client the WebSocket is opened with is made beforehand. The replica waits on
an observer of its map, not by polling.

*Write to visible.* With that replica still connected, ``latency_samples`` writes
of one key (``ymap["n"] = index``), one at a time, first on the room's document (room
-> replica, pushed as an update), then as many on the replica's (replica -> room).
Each figure is the time from just before the write until the other side's map
observer has seen the value and the waiting task has woken. After each write the
bench waits for every task to block, so each figure starts from rest.

Real time throughout (``time.perf_counter``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

import httpx
import trio
import trio.testing
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from pycrdt import Doc, Map, MapEvent, Provider
from pycrdt.websocket import ASGIServer, WebsocketServer
from pycrdt.websocket.websocket import HttpxWebsocket

from bench._table import print_table

ROOM = "/bench"
"""The room's name: the path the client dials."""
MAP = "map"
"""The root map every write goes to."""
SIZES = (10_000, 100_000)
"""Writes in the room's document, one row of figures each."""
MAX_MESSAGE = 1 << 30
"""Bytes a WebSocket message to the client may have: the initial sync sends the whole
document in one (httpx-ws refuses more than 64 KiB unless told)."""
SYNC_WITHIN = 600.0
"""Seconds the initial sync may take before the benchmark gives up."""
VISIBLE_WITHIN = 10.0
"""Seconds a write may take to show on the other side before the benchmark gives up."""


class _Watch:
    """An observer of a map that wakes a waiter once the map is as it waits for."""

    def __init__(self, ymap: Map[int]) -> None:
        self._map = ymap
        self._until: Callable[[Map[int]], bool] = lambda _: False
        self._seen = trio.Event()
        ymap.observe(self._changed)

    def _changed(self, _event: MapEvent) -> None:
        if self._until(self._map):
            self._seen.set()

    def arm(self, until: Callable[[Map[int]], bool]) -> trio.Event:
        """An event set at the first change after which ``until`` holds of the map."""
        self._until, self._seen = until, trio.Event()
        return self._seen


@asynccontextmanager
async def _server() -> AsyncIterator[tuple[WebsocketServer, str]]:
    """A running WebSocket server and the URL of its room."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger(__name__)  # no "Running on" in the output
    async with (
        WebsocketServer(auto_clean_rooms=False) as websocket_server,
        trio.open_nursery() as nursery,
    ):
        # pycrdt-websocket types its ASGI application's messages as plain dicts
        app = cast(ASGIFramework, ASGIServer(websocket_server))
        binds = await nursery.start(partial(serve, app, config, mode="asgi"))
        yield websocket_server, f"{binds[0]}{ROOM}"
        nursery.cancel_scope.cancel()


async def _visible(writer: Map[int], reader: _Watch, index: int) -> float:
    """Seconds from just before ``writer["n"] = index`` until ``reader`` sees it."""
    seen = reader.arm(lambda ymap: ymap.get("n") == index)
    began = time.perf_counter()
    writer["n"] = index
    with trio.fail_after(VISIBLE_WITHIN):
        await seen.wait()
    return time.perf_counter() - began


def _p99(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=100, method="inclusive")[98]


async def _measure(writes: int, latency_samples: int) -> dict[str, float]:
    async with _server() as (websocket_server, url), httpx.AsyncClient() as client:
        room = await websocket_server.get_room(ROOM)
        await trio.testing.wait_all_tasks_blocked()
        on_room: Map[int] = room.ydoc.get(MAP, type=Map)
        for index in range(writes):
            on_room[f"k{index}"] = index
        room_watch = _Watch(on_room)
        await trio.testing.wait_all_tasks_blocked()

        replica: Doc[Map[int]] = Doc()
        on_replica: Map[int] = replica.get(MAP, type=Map)
        replica_watch = _Watch(on_replica)
        synced = replica_watch.arm(lambda ymap: len(ymap) == writes)
        began = time.perf_counter()
        async with (
            aconnect_ws(
                url,
                client,
                max_message_size_bytes=MAX_MESSAGE,
                session_class=AsyncWebSocketSession,  # the default, named for mypy
            ) as websocket,
            Provider(replica, HttpxWebsocket(websocket, ROOM)),
        ):
            with trio.fail_after(SYNC_WITHIN):
                await synced.wait()
            replicate = time.perf_counter() - began

            await trio.testing.wait_all_tasks_blocked()
            down, up = [], []
            for index in range(latency_samples):
                down.append(await _visible(on_room, replica_watch, index))
                await trio.testing.wait_all_tasks_blocked()
            for index in range(latency_samples, 2 * latency_samples):
                up.append(await _visible(on_replica, room_watch, index))
                await trio.testing.wait_all_tasks_blocked()
    return {
        "writes": float(writes),
        "replicate_seconds": replicate,
        "replicate_writes_per_s": writes / replicate,
        "visible_p50_ms": statistics.median(down) * 1e3,
        "visible_p99_ms": _p99(down) * 1e3,
        "visible_back_p50_ms": statistics.median(up) * 1e3,
        "visible_back_p99_ms": _p99(up) * 1e3,
    }


def measure(writes: int = 10_000, latency_samples: int = 200) -> dict[str, float]:
    """Figures for a room of ``writes`` writes (see the module's docstring): the initial
    sync's seconds and writes per second, and write -> visible in ms, median and p99,
    room -> replica (``visible_*``) and replica -> room (``visible_back_*``)."""
    return trio.run(_measure, writes, latency_samples)


def main() -> None:
    rows = []
    for writes in SIZES:
        figures = measure(writes)
        rows.append(
            [
                f"{writes:,}",
                f"{figures['replicate_seconds']:.3f}",
                f"{figures['replicate_writes_per_s']:,.0f}",
                f"{figures['visible_p50_ms']:.2f}",
                f"{figures['visible_p99_ms']:.2f}",
                f"{figures['visible_back_p50_ms']:.2f}",
                f"{figures['visible_back_p99_ms']:.2f}",
            ]
        )
    print_table(
        "pycrdt + pycrdt-websocket: initial sync of a fresh replica, write -> visible (ms)",
        [
            "writes in room",
            "sync s",
            "writes/s",
            "room->replica p50",
            "p99",
            "replica->room p50",
            "p99",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
