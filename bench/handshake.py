"""What a handshake costs each end, over no link and over a real one.

*Each end, sans-IO.* :data:`HANDSHAKES` handshakes between an :class:`Initiator` and
one :class:`Responder`, each message handed straight to the other side. The time
spent in each side's own calls is summed apart (``time.perf_counter`` around every
call: ``start``, ``receive_reply`` and ``receive_done`` for the initiator,
``receive_init`` and ``receive_finish`` for the responder), and the figure is ms per
handshake at each end, the median of :data:`REPEATS` runs. Next to it is the floor,
measured in the same run (its runs between theirs): one Ed25519 signature and one
verification of a transcript-sized message, which each end must make whatever else
it does, and the ratio of the end's cost to it.

*A whole handshake over WebSocket.* :data:`LINK_HANDSHAKES` calls of
``Link.handshake`` against a node's :class:`SyncService` served by a
:class:`WebSocketTransport` on 127.0.0.1, over one link kept open (so no TCP or
WebSocket opening is timed): ms per handshake, two round trips included, and its
ratio to the two ends' sans-IO cost added up, measured in the same run.

The script uses only what every protocol version has (the initiator's and
responder's methods, ``Link.handshake``, ``ServerLimits.handshake_rate``), so run on
an older checkout it measures the older handshake the same way::

    git worktree add /tmp/before 8a59d59
    cp bench/handshake.py /tmp/before/bench/
    cd /tmp/before && PYTHONPATH=. /path/to/.venv/bin/python -m bench.handshake
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import trio

import eidetica
from bench._table import print_table
from eidetica.actors.link import Link
from eidetica.actors.service import SyncService
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.handshake import HANDSHAKE_DOMAIN, Initiator, Responder
from eidetica.protocol.keys import SigningKey, verify
from eidetica.protocol.messages import PROTOCOL_VERSION

HANDSHAKES = 2_000
"""Handshakes per sans-IO run."""
LINK_HANDSHAKES = 500
"""Handshakes over the WebSocket link per run."""
REPEATS = 5
TRANSCRIPT_BYTES = 261
"""The size the floor's signature covers: a version-2 transcript (version 1's is 193
bytes; Ed25519's cost hardly depends on it)."""

T = TypeVar("T")
P = ParamSpec("P")


@dataclass
class _Clock:
    """Seconds spent in one side's calls."""

    spent: float = 0.0

    def time(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        result = call(*args, **kwargs)
        self.spent += time.perf_counter() - start
        return result


def _sans_io_run(count: int) -> tuple[float, float]:
    """Seconds per handshake at the initiator and at the responder."""
    initiator_key, responder_key = SigningKey.generate(), SigningKey.generate()
    responder = Responder(responder_key)
    mine, theirs = _Clock(), _Clock()
    for _ in range(count):
        now = time.time()
        initiator = Initiator(initiator_key, now=now)
        init = mine.time(initiator.start)
        reply = theirs.time(responder.receive_init, init, now=now)
        finish = mine.time(initiator.receive_reply, reply)
        proven = theirs.time(responder.receive_finish, finish, now=now)
        mine.time(initiator.receive_done, proven.done)
    return mine.spent / count, theirs.spent / count


def _floor_run(count: int) -> float:
    """Seconds for one Ed25519 signature and one verification."""
    key = SigningKey.generate()
    message = os.urandom(TRANSCRIPT_BYTES)
    start = time.perf_counter()
    for _ in range(count):
        signature = key.sign(HANDSHAKE_DOMAIN, message)
        verify(key.public_key, HANDSHAKE_DOMAIN, message, signature)
    return (time.perf_counter() - start) / count


async def _link_run(count: int) -> float:
    """Seconds per whole handshake over one open WebSocket link."""
    limits = ServerLimits(handshake_rate=1e9)
    async with (
        eidetica.open_instance(None) as server,
        eidetica.open_instance(None) as client,
        WebSocketTransport(limits=limits) as transport,
        trio.open_nursery() as nursery,
    ):
        service = SyncService(server, MSGPACK, limits=limits)
        at = await nursery.start(transport.serve, "ws://127.0.0.1:0", service.handle)
        link = Link(transport, at, MSGPACK)
        await link.handshake(client)  # opens the link: not timed
        start = time.perf_counter()
        for _ in range(count):
            await link.handshake(client)
        spent = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return spent / count


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def main() -> None:
    runs, floors, links = [], [], []
    for _ in range(REPEATS):  # interleaved, so that a slower spell of the machine hits all
        runs.append(_sans_io_run(HANDSHAKES))
        floors.append(_floor_run(HANDSHAKES))
        links.append(trio.run(_link_run, LINK_HANDSHAKES))
    initiator = statistics.median(run[0] for run in runs)
    responder = statistics.median(run[1] for run in runs)
    floor = statistics.median(floors)
    link = statistics.median(links)
    print(f"protocol version {PROTOCOL_VERSION}")
    print_table(
        f"One handshake, ms (median of {REPEATS} runs; floor: one Ed25519 sign + verify)",
        ["", "ms per handshake", "floor, ms", "/ floor"],
        [
            ["initiator, sans-IO", _ms(initiator), _ms(floor), f"{initiator / floor:.2f}"],
            ["responder, sans-IO", _ms(responder), _ms(floor), f"{responder / floor:.2f}"],
        ],
    )
    both = initiator + responder
    print_table(
        "A whole handshake over an open WebSocket link on 127.0.0.1, ms",
        ["", "ms per handshake", "both ends sans-IO, ms", "/ both ends"],
        [["Link.handshake", _ms(link), _ms(both), f"{link / both:.2f}"]],
    )


if __name__ == "__main__":
    main()
