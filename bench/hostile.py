"""What hostile connections cost an honest peer, and the node's memory under them.

Issue 9 asks, for its closing note: with 1,000 hostile connections held open against
a node, an honest peer's handshake + sync time (median and max) and the node's RSS;
and the worst-case memory formula with its defaults, with the measured peak beside it.

*The node.* A real ``eidetica serve`` process with its default limits
(:class:`~eidetica.actors.transports.admission.ServerLimits`), listening on
``ws://127.0.0.1:0`` and ``http://127.0.0.1:0``, on a data directory filled beforehand
through the Python API: one tree of :data:`ENTRIES` commits (one document write each)
that ``*`` may read. Its memory is read from ``/proc/PID/status``: ``VmRSS`` now and
``VmHWM`` at peak; the peak is reset at the start of each phase (``5`` written to
``/proc/PID/clear_refs``), so each phase's peak is its own.

*The honest peer.* For each run a fresh in-memory node in this process, from
127.0.0.1, runs ``connect`` (the mutual handshake), ``add_tree_sync`` and
``sync_with_peer``: a pull of the whole tree. The time from before ``connect`` until
the pull returns is "handshake + sync", and the handshake alone is shown too. Runs
alternate WebSocket and HTTP, :data:`RUNS` of each, at most four a second (see
:data:`HONEST_PACE`), both before any attack (the baseline, the limit every figure
under attack is divided by) and under attack.

*The attackers.* A separate process (``python -m bench.hostile --attack PLAN``, so its
event loop does not share this one's), raw sockets, each bound to a source address in
127.0.0.2 ... 127.0.0.40 before connecting, so the cap per source is not what refuses
them (1,000 over 39 addresses is at most 26 each, under the default 64). Kinds:

- ``idle-ws``, ``idle-http``: TCP connections to the WebSocket or HTTP port that never
  send a byte;
- ``ws-silent``: a WebSocket upgrade, accepted (101), then silence;
- ``ws-stalled``: an upgrade, then a binary frame header declaring 15 MiB and
  :data:`STALL_BYTES` of it, then silence;
- ``http-stalled``: ``POST /api/v0`` declaring ``Content-Length`` 15 MiB, then
  :data:`STALL_BYTES` of the body, then silence.

(Phases 3 and 4 send more, or declare more: see below.)

An attempt is *refused* when the node turns it away within :data:`SETTLE` seconds of
its opening bytes (a reset, an EOF, a refused upgrade), or says it is busy whenever it
does (an HTTP 503, a WebSocket close 1013: "late" when it came after :data:`SETTLE`);
otherwise it is *held*, until the node cuts it (its deadlines: 10 s for a handshake,
5 s of HTTP keep-alive idleness, 30 s for a message) or the phase ends. "1st held"
counts the first attempts still open :data:`SETTLE` seconds after their opening;
"connected" the range of TCP connections open while the honest runs went on; "linger"
how long a cut connection stayed open after the node's close frame or answer (these
clients never answer a close frame). The
node's own count of what it refused and cut is read from its log, and the kernel's
count of connections dropped because a listen queue was full from
``/proc/net/netstat`` (machine-wide).

*Phases.*

1. Per-connection overhead: 1,000 ``ws-silent`` links (the idle kind the node keeps
   the most state for), opened once, not reopened; RSS growth / links held.
2. The attack: 1,000 connections of the mix, each reopened as soon as the node cuts
   it (:data:`REFUSED_PAUSE` after a refusal), held for the whole measurement; the
   honest runs meanwhile, and the node's RSS sampled every :data:`SAMPLE_EVERY` s.
   2b. The same, with refusals retried after :data:`HASTY_PAUSE`: the stalled HTTP
   bodies the budget turns away come back as a stream of requests.
3. The issue's scenario: 20 connections (10 WebSocket, 10 HTTP) each sending all but
   the last KiB of a 15 MiB frame or body, then stalling. RSS before and after.
4. Squatting the byte budget: :data:`SQUATTERS` HTTP requests from four sources, each
   declaring the largest body allowed (16 MiB) and sending 100 bytes of it, reopened
   when cut; :data:`SQUAT_RUNS` honest runs per transport meanwhile.

*The bound.* :func:`memory_bound` adds up the documented pieces (a placeholder for the
formula docs/security.md will give): the baseline RSS measured at start, the node's
byte budget, ``max_connections`` times the per-connection overhead measured in phase
1, the holding area's cap, and the session tables (pending handshakes, sessions and
handshake-rate buckets, each at its cap, measured here with tracemalloc on the real
structures: :func:`session_tables`).

Every loop is bounded in count and time; all addresses are in 127.0.0.0/8; the node
and the attacker process are stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import re
import resource
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

import eidetica
from bench._table import print_table
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.admission import MIB, ServerLimits
from eidetica.errors import first_leaf
from eidetica.protocol.handshake import DEFAULT_MAX_PENDING, Responder
from eidetica.protocol.intake import MAX_HELD_BYTES
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import MAX_MESSAGE_BYTES
from eidetica.protocol.messages import HandshakeInit
from eidetica.protocol.ratelimit import DEFAULT_MAX_KEYS, TokenBuckets
from eidetica.protocol.sessions import DEFAULT_MAX_SESSIONS, SessionTable
from tests.hostile.attacks import frame_header
from tests.processes import COMMAND

ENTRIES = 200
"""Commits in the tree the honest peer pulls (besides its root and the read grant)."""
RUNS = 20
"""Honest handshake + sync runs per transport, in each of the baseline and the attack."""
HOSTILE = 1_000
"""Hostile connections held open in phases 1 and 2."""
SOURCES = tuple(f"127.0.0.{host}" for host in range(2, 41))
"""Where the attackers connect from; 127.0.0.1 is the honest peer's."""
MIX = {"idle-ws": 125, "idle-http": 125, "ws-silent": 250, "ws-stalled": 250, "http-stalled": 250}
"""Phase 2's connections by kind."""
KINDS = tuple(MIX)
DECLARED = 15 * MIB
"""What a stalled frame or body declares."""
STALL_BYTES = 4 * 1024
"""What a stalled frame or body of phase 2 sends of it before stalling."""
BIG_SENT = DECLARED - 1024
"""What each of phase 3's frames and bodies sends before stalling: all but a KiB."""
BIG = 10
"""Phase 3's connections of each transport."""
SQUATTERS = 4
"""Phase 4's connections: HTTP requests declaring the largest body allowed."""
SQUAT_RUNS = 5
"""Honest runs per transport in phase 4."""
STAGGER = 0.002
"""Seconds between the first attempts of two hostile connections: 1,000 in 2 s."""
SETTLE = 1.0
"""An attempt the node closes within this many seconds of its opening counts as refused."""
OPEN_WITHIN = 20.0
"""Seconds a connect, an upgrade or the opening bytes may take before the attempt is
given up (as refused)."""
BUSY = frozenset({"http 503", "ws close 1013"})
"""The node's "busy, try later" answers: refusals, whenever they come."""
REFUSED_PAUSE = 5.0
"""Seconds a phase-2 attacker waits before trying again after a refusal: it holds
connections; it does not flood the node with attempts the node refuses."""
HASTY_PAUSE = 1.0
"""The same for phase 2b, whose attacker does retry refusals at once (or nearly)."""
MAX_ATTEMPTS = 500
"""Attempts per hostile connection slot, at most."""
ATTACK_LIMIT = 400.0
"""Seconds the attacker process runs at most, whatever happens."""
FIRST_WAVE_WITHIN = 60.0
"""Seconds every slot's first attempt may take to be held or refused."""
HONEST_WITHIN = 60.0
"""Seconds one honest handshake + sync may take before it counts as failed."""
HONEST_RUNS_WITHIN = 180.0
"""Seconds a phase's honest runs may take in all; the attacker outlasts them."""
HONEST_PACE = 0.25
"""Seconds between the starts of two honest runs, at least: all come from 127.0.0.1,
and a node lets one source start ``handshake_rate`` (10) handshakes a second, in
bursts of 20; an honest peer does not handshake four times a second, so the pace keeps
the bench from measuring the rate limit instead of the attack."""
SAMPLE_EVERY = 0.05
"""Seconds between two readings of the node's memory."""
REPORT_EVERY = 0.25
"""Seconds between two reports of the attacker process."""
START_WITHIN = 60.0
STOP_WITHIN = 30.0
QUIET_WITHIN = 30.0
BIG_HOLD = 3.0
"""Seconds phase 3 samples the node's memory after its connections are all placed."""
QUIET = SyncConfig(periodic_sync=86_400.0, connection_check=86_400.0, retry_sweep=86_400.0)
ROOT = Path(__file__).resolve().parent.parent

GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _post_head(length: int) -> bytes:
    return (
        "POST /api/v0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: room for the hostile sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# == the attacker process =============================================================


class Plan(msgspec.Struct, frozen=True):
    """What the attacker process does: one slot per (kind, source)."""

    ws_port: int
    http_port: int
    slots: list[tuple[str, str]]
    reconnect: bool
    sent: int
    """Bytes of the declared frame or body a stalled connection sends."""
    declared: int = DECLARED
    """What a stalled frame or body declares."""
    refused_pause: float = REFUSED_PAUSE
    """Seconds a slot waits before trying again after a refusal."""
    limit: float = ATTACK_LIMIT


class Snapshot(msgspec.Struct):
    """The attacker's counts so far, by kind."""

    elapsed: float
    open: dict[str, int]
    """TCP connections open now, from their connect to their end."""
    attempts: dict[str, int]
    first_done: int
    first_held: dict[str, int]
    first_refused: dict[str, dict[str, int]]
    refused: dict[str, dict[str, int]]
    cut: dict[str, dict[str, int]]
    held_seconds: dict[str, list[float]]
    """Per kind, the minimum, median and maximum of how long connections the node cut
    were held, from the end of their opening bytes to the end of the connection."""
    linger_seconds: dict[str, list[float]]
    """The same, of how long such connections stayed open after the node's close frame
    or answer: the close handshake it waits for, which these clients never send."""
    cpu: float
    final: bool = False


class _Reader:
    """Reads what the node sends on one hostile connection, keeping only what says why
    it ended: an HTTP status line and a WebSocket close frame."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.status: int | None = None
        self.close_code: int | None = None
        self.reset = False
        self.head_seen = trio.Event()
        self.done = trio.Event()
        self.told: float | None = None
        """When the node's close frame, or its answer to a stalled request, came."""
        self._buffer = bytearray()

    async def run(self) -> None:
        try:
            while data := await self.stream.receive_some(65536):
                self._take(bytes(data))
        except GONE:
            self.reset = True
        finally:
            self.head_seen.set()
            self.done.set()

    def _take(self, data: bytes) -> None:
        self._buffer += data
        if self.status is None:
            head, found, rest = bytes(self._buffer).partition(b"\r\n\r\n")
            if not found:
                del self._buffer[: max(0, len(self._buffer) - 65536)]
                return
            match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            self.status = int(match.group(1)) if match else 0
            if self.status != 101:
                self.told = trio.current_time()
            self._buffer = bytearray(rest)
            self.head_seen.set()
        if self.status == 101 and self.close_code is None:
            self._frames()
        else:
            self._buffer.clear()

    def _frames(self) -> None:
        """Skip the node's frames (pings) up to its close frame, if it came."""
        buffer = self._buffer
        at = 0
        while at + 2 <= len(buffer):
            opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if start + 2 > len(buffer):
                    break
                length = struct.unpack_from("!H", buffer, start)[0]
                start += 2
            elif length == 127:
                if start + 8 > len(buffer):
                    break
                length = struct.unpack_from("!Q", buffer, start)[0]
                start += 8
            if start + length > len(buffer):
                break
            if opcode == 0x8:
                code = struct.unpack_from("!H", buffer, start)[0] if length >= 2 else 1005
                self.close_code = code
                self.told = trio.current_time()
                buffer.clear()
                return
            at = start + length
        del buffer[:at]

    def reason(self) -> str:
        """Why the connection ended, as the node told it."""
        if self.close_code is not None:
            return f"ws close {self.close_code}"
        if self.status is not None and self.status != 101:
            return f"http {self.status}"
        return "reset" if self.reset else "eof"


class _Attacker:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.began = trio.current_time()
        self.payload = bytes(plan.sent)
        self.open: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.first_done = 0
        self.first_held: Counter[str] = Counter()
        self.first_refused: dict[str, Counter[str]] = {}
        self.refused: dict[str, Counter[str]] = {}
        self.cut: dict[str, Counter[str]] = {}
        self.held: dict[str, list[float]] = {}
        self.linger: dict[str, list[float]] = {}

    def snapshot(self, *, final: bool = False) -> Snapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)

        def spread(values: list[float]) -> list[float]:
            return [min(values), statistics.median(values), max(values)] if values else []

        return Snapshot(
            elapsed=trio.current_time() - self.began,
            open=dict(self.open),
            attempts=dict(self.attempts),
            first_done=self.first_done,
            first_held=dict(self.first_held),
            first_refused={kind: dict(why) for kind, why in self.first_refused.items()},
            refused={kind: dict(why) for kind, why in self.refused.items()},
            cut={kind: dict(why) for kind, why in self.cut.items()},
            held_seconds={kind: spread(values) for kind, values in self.held.items()},
            linger_seconds={kind: spread(values) for kind, values in self.linger.items()},
            cpu=usage.ru_utime + usage.ru_stime,
            final=final,
        )

    async def slot(self, kind: str, source: str, delay: float) -> None:
        """One hostile connection, reopened (if the plan says so) until stopped."""
        await trio.sleep(delay)
        for attempt in range(MAX_ATTEMPTS):
            refused = await self.attempt(kind, source, first=attempt == 0)
            if not self.plan.reconnect:
                return
            if refused:
                await trio.sleep(self.plan.refused_pause)

    def _refuse(self, kind: str, why: str, *, first: bool) -> None:
        self.refused.setdefault(kind, Counter())[why] += 1
        if first:
            self.first_refused.setdefault(kind, Counter())[why] += 1
            self.first_done += 1

    async def attempt(self, kind: str, source: str, *, first: bool) -> bool:
        """Open, hold until the node cuts it; whether the node refused it."""
        self.attempts[kind] += 1
        port = self.plan.http_port if kind in ("idle-http", "http-stalled") else self.plan.ws_port
        sock = trio.socket.socket()
        try:
            with trio.fail_after(OPEN_WITHIN):
                await sock.bind((source, 0))
                await sock.connect(("127.0.0.1", port))
        except trio.TooSlowError:
            sock.close()
            self._refuse(kind, "connect timeout", first=first)
            return True
        except OSError as exc:
            sock.close()
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self._refuse(kind, f"connect {name}", first=first)
            return True
        stream = trio.SocketStream(sock)
        reader = _Reader(stream)
        self.open[kind] += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                why = await self._opening(kind, stream, reader)
                opened = trio.current_time()
                if why is None:
                    with trio.move_on_after(SETTLE):
                        await reader.done.wait()
                    if reader.done.is_set():
                        why = reader.reason()
                if why is not None:
                    self._refuse(kind, why, first=first)
                    nursery.cancel_scope.cancel()
                    return True
                if first:
                    self.first_held[kind] += 1
                    self.first_done += 1
                await reader.done.wait()
            ended = trio.current_time()
            why = reader.reason()
            if why in BUSY:  # a refusal, however late it came
                self.refused.setdefault(kind, Counter())[f"{why} late"] += 1
                return True
            self.cut.setdefault(kind, Counter())[why] += 1
            self.held.setdefault(kind, []).append(ended - opened)
            if reader.told is not None:
                self.linger.setdefault(kind, []).append(ended - reader.told)
            return False
        finally:
            self.open[kind] -= 1
            _reset(stream)

    async def _opening(self, kind: str, stream: trio.SocketStream, reader: _Reader) -> str | None:
        """Send what ``kind`` sends before it stalls; why the node refused, if it did."""
        if kind.startswith("idle"):
            return None
        with trio.move_on_after(OPEN_WITHIN) as opening:
            if kind.startswith("ws"):
                if not await _send_unless_closed(stream, UPGRADE, reader):
                    return reader.reason()
                await reader.head_seen.wait()
                if reader.status != 101:
                    return "no upgrade: " + reader.reason()
                if kind == "ws-silent":
                    return None
                head = frame_header(self.plan.declared)
            else:
                head = _post_head(self.plan.declared)
            if not await _send_unless_closed(stream, head, reader):
                return reader.reason()
            if not await _send_unless_closed(stream, memoryview(self.payload), reader):
                return reader.reason()
            return None
        assert opening.cancelled_caught
        return "opening timed out"


async def _send_unless_closed(
    stream: trio.SocketStream, data: bytes | memoryview, reader: _Reader
) -> bool:
    """Send ``data``; ``False`` if the node closed the connection first."""
    sent = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await reader.done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        with contextlib.suppress(*GONE):
            await stream.send_all(data)
            sent = True
        nursery.cancel_scope.cancel()
    if not sent:  # the node's last words may still be on their way
        with trio.move_on_after(SETTLE):
            await reader.done.wait()
    return sent


def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset: nothing lingers on either side."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    stream.socket.close()


def _emit(snapshot: Snapshot) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(snapshot) + b"\n")
    sys.stdout.buffer.flush()


async def _stdin_closed() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        with contextlib.suppress(*GONE):
            while await stdin.receive_some(1024):
                pass


async def _attack(plan: Plan) -> None:
    attacker = _Attacker(plan)

    async def report() -> None:
        while True:
            _emit(attacker.snapshot())
            await trio.sleep(REPORT_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        for index, (kind, source) in enumerate(plan.slots):
            nursery.start_soon(attacker.slot, kind, source, index * STAGGER)
        with trio.move_on_after(plan.limit):
            await _stdin_closed()
        _emit(attacker.snapshot(final=True))
        nursery.cancel_scope.cancel()


def _attack_main(plan_json: str) -> int:
    _raise_descriptor_limit()
    trio.run(_attack, msgspec.json.decode(plan_json, type=Plan))
    return 0


# == this side: the node, the attacks, the honest peer ================================


@dataclass
class _Node:
    process: trio.Process
    log: Path
    ws: str
    http: str
    exit_code: int | None = None
    hwm_reset: bool = True
    """Whether the peak could be reset between phases (else it is the peak so far)."""
    _log_read: int = 0

    def port(self, address: str) -> int:
        return int(address.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def memory(self, name: str = "VmRSS") -> int:
        """``VmRSS`` or ``VmHWM`` of the node, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == name:
                return int(value.split()[0]) * 1024
        raise RuntimeError(f"no {name} in /proc/{self.process.pid}/status")

    def cpu(self) -> float:
        """Seconds of CPU the node has used (user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            self.hwm_reset = False

    def new_log(self) -> str:
        """What the node logged since the last call."""
        with self.log.open("rb") as file:
            file.seek(self._log_read)
            data = file.read()
        self._log_read += len(data)
        return data.decode(errors="replace")


LOG_EVENTS = {
    "refused (admission)": "refused a connection from",
    "no handshake in time": "no handshake within",
    "upgrade not finished": "did not finish its WebSocket upgrade",
    "message too slow": "to arrive",
    "HTTP 503 (budget)": "refused an HTTP request (503)",
    "WS 1013 (budget)": "1013 TRY_AGAIN_LATER",
    "HTTP 408 (body too slow)": "refused an HTTP request (408)",
    "HTTP 413": "refused an HTTP request (413)",
    "out of descriptors": "cannot accept for now",
    "Traceback": "Traceback",
    "ERROR lines": "ERROR ",
}
"""What the node's log says it did, by what the line contains."""


def _log_events(text: str) -> dict[str, int]:
    return {name: text.count(needle) for name, needle in LOG_EVENTS.items()}


async def _fill(data: Path) -> tuple[str, int]:
    """The data directory: one tree of :data:`ENTRIES` commits anyone may read; its id
    and entry count."""
    async with eidetica.open_instance(data) as inst:
        tree = await inst.create_tree(name="bench")
        for index in range(ENTRIES):
            async with tree.transaction() as op:
                op.doc("bench").set(f"k{index}", {"n": index, "text": "x" * 100})
        await tree.grant("*", "read")
        return tree.root_id, len(await tree.entries())


async def _until_ready(process: trio.Process) -> dict[str, list[str]]:
    """What ``serve`` printed before ``ready``, by first word."""
    assert process.stdout is not None
    buffer = b""
    said: dict[str, list[str]] = {}
    while True:
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"serve stopped before it was ready: {buffer!r}")
            buffer += chunk
        line, _, buffer = buffer.partition(b"\n")
        word, _, rest = line.decode().strip().partition(" ")
        if word == "ready":
            return said
        said.setdefault(word, []).append(rest)


async def _end(process: trio.Process) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit in time; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_WITHIN):
            await process.wait()
    if process.poll() is None:
        process.kill()
        with trio.move_on_after(STOP_WITHIN):
            await process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(*GONE):
                await pipe.aclose()
    return process.poll()


@asynccontextmanager
async def _serving(data: Path, log: Path) -> AsyncIterator[_Node]:
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [
                *COMMAND,
                "--data",
                str(data),
                "serve",
                "--listen",
                "ws://127.0.0.1:0",
                "--listen",
                "http://127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    node: _Node | None = None
    try:
        with trio.fail_after(START_WITHIN):
            said = await _until_ready(process)
        listening = said.get("listening", [])
        ws = next(address for address in listening if address.startswith("ws://"))
        http = next(address for address in listening if address.startswith("http://"))
        node = _Node(process, log, ws, http)
        yield node
    finally:
        code = await _end(process)
        if node is not None:
            node.exit_code = code


class _Attack:
    """The attacker process seen from here: its latest report, and the reports of a
    window of interest."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.latest: Snapshot | None = None
        self.final: Snapshot | None = None
        self.window: list[Snapshot] | None = None
        self._news = trio.lowlevel.ParkingLot()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := await self.process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                snapshot = msgspec.json.decode(line, type=Snapshot)
                self.latest = snapshot
                if snapshot.final:
                    self.final = snapshot
                if self.window is not None:
                    self.window.append(snapshot)
            self._news.unpark_all()
        self._news.unpark_all()

    async def first_wave(self, slots: int) -> Snapshot:
        """The report in which every slot's first attempt is held or refused."""
        with trio.fail_after(FIRST_WAVE_WITHIN):
            while self.latest is None or self.latest.first_done < slots:
                if self.process.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the attacker exited ({self.process.returncode}):\n{tail}")
                await self._news.park()
        return self.latest

    async def fresh(self) -> Snapshot:
        """The next report."""
        seen = self.latest
        with trio.fail_after(10 * REPORT_EVERY + 5):
            while self.latest is seen:
                await self._news.park()
        assert self.latest is not None
        return self.latest

    async def stop(self) -> Snapshot | None:
        """Close its stdin (it stops) and wait for its last report."""
        if self.process.stdin is not None:
            with contextlib.suppress(*GONE):
                await self.process.stdin.aclose()
        with trio.move_on_after(STOP_WITHIN):
            await self.process.wait()
        return self.final


@asynccontextmanager
async def _attacking(node: _Node, scenario: Scenario, log: Path) -> AsyncIterator[_Attack]:
    plan = Plan(
        ws_port=node.port(node.ws),
        http_port=node.port(node.http),
        slots=_slots(scenario.kinds),
        reconnect=scenario.reconnect,
        sent=scenario.sent,
        declared=scenario.declared,
        refused_pause=scenario.refused_pause,
    )
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.hostile", "--attack", msgspec.json.encode(plan).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
    attack = _Attack(process, log)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack.read)
            try:
                yield attack
            finally:
                await attack.stop()
    finally:
        await _end(process)


def _slots(counts: dict[str, int]) -> list[tuple[str, str]]:
    """Connections of each kind, interleaved, their sources taken in turn."""
    kinds: list[str] = []
    left = dict(counts)
    while any(left.values()):
        for kind in counts:
            if left[kind]:
                kinds.append(kind)
                left[kind] -= 1
    return [(kind, SOURCES[index % len(SOURCES)]) for index, kind in enumerate(kinds)]


@dataclass
class _Honest:
    """Honest runs of one transport: seconds of handshake and of handshake + sync."""

    handshake: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


async def _honest_once(address: str, root: str, expected: int, into: _Honest) -> None:
    try:
        async with eidetica.open_instance(None) as inst, open_sync(inst, config=QUIET) as sync:
            with trio.fail_after(HONEST_WITHIN):
                began = time.perf_counter()
                peer = await sync.connect(address)
                shook = time.perf_counter()
                await sync.add_tree_sync(peer, root)
                await sync.sync_with_peer(peer)
                done = time.perf_counter()
            pulled = len(await (await inst.open_tree(root)).entries())
            if pulled != expected:
                raise RuntimeError(f"pulled {pulled} entries, not {expected}")
    except Exception as exc:  # a failure is a figure here, not the end of the bench
        leaf = first_leaf(exc)
        into.failures[f"{type(leaf).__name__}: {str(leaf)[:110]}"] += 1
        return
    into.handshake.append(shook - began)
    into.total.append(done - began)


async def _honest_runs(node: _Node, root: str, expected: int, runs: int) -> dict[str, _Honest]:
    """``runs`` honest runs over each transport, alternating, started at least
    :data:`HONEST_PACE` apart; those not started within :data:`HONEST_RUNS_WITHIN`
    count as failed ("not run")."""
    results = {"ws": _Honest(), "http": _Honest()}
    deadline = trio.current_time() + HONEST_RUNS_WITHIN
    for _ in range(runs):
        for transport, address in (("ws", node.ws), ("http", node.http)):
            began = trio.current_time()
            if began > deadline:
                results[transport].failures[f"not run: past {HONEST_RUNS_WITHIN:g} s"] += 1
                continue
            with trio.move_on_after(HONEST_WITHIN + 30) as guard:
                await _honest_once(address, root, expected, results[transport])
            if guard.cancelled_caught:
                results[transport].failures["the honest node did not close in time"] += 1
            await trio.sleep_until(began + HONEST_PACE)
    return results


@dataclass
class _Memory:
    """The node's memory over a phase."""

    before: int
    peak_rss: int = 0
    """The highest VmRSS sampled."""
    hwm: int = 0
    """VmHWM at the end of the phase (since its start, if the peak could be reset)."""
    after: int = 0
    queue_peak: dict[str, int] = field(default_factory=dict)
    """The longest accept queue sampled on each listener (ws, http): connections the
    kernel had completed and the node had not accepted yet."""
    backlog: dict[str, int] = field(default_factory=dict)
    """Each listener's accept-queue limit; past it, the kernel drops new connections."""


def _accept_queues(ports: dict[str, int]) -> dict[str, int]:
    """Each listening port's accept queue now, from ``/proc/net/tcp`` (a listening
    socket's ``rx_queue``)."""
    wanted = {f"0100007F:{port:04X}": name for name, port in ports.items()}
    found: dict[str, int] = {}
    with Path("/proc/net/tcp").open() as table:
        next(table)
        for line in table:
            fields = line.split(None, 5)
            if fields[3] == "0A" and fields[1] in wanted:
                found[wanted[fields[1]]] = int(fields[4].split(":")[1], 16)
    return found


async def _backlogs(ports: dict[str, int]) -> dict[str, int]:
    """Each listening port's accept-queue limit, as ``ss -ltn`` shows it (Send-Q);
    nothing if ``ss`` is not there."""
    try:
        with trio.fail_after(10):
            shown = await trio.run_process(["ss", "-ltnH"], capture_stdout=True, check=False)
    except (OSError, trio.TooSlowError):
        return {}
    found: dict[str, int] = {}
    for line in shown.stdout.decode().splitlines():
        fields = line.split()
        for name, port in ports.items():
            if len(fields) >= 4 and fields[3] == f"127.0.0.1:{port}":
                found[name] = int(fields[2])
    return found


@asynccontextmanager
async def _watching(node: _Node) -> AsyncIterator[_Memory]:
    """Sample the node's memory every :data:`SAMPLE_EVERY` seconds for the block."""
    memory = _Memory(before=node.memory())
    memory.peak_rss = memory.before
    node.reset_peak()

    ports = {"ws": node.port(node.ws), "http": node.port(node.http)}

    memory.backlog = await _backlogs(ports)

    async def sample() -> None:
        while node.alive():
            with contextlib.suppress(OSError, RuntimeError):
                memory.peak_rss = max(memory.peak_rss, node.memory())
                for name, queued in _accept_queues(ports).items():
                    memory.queue_peak[name] = max(memory.queue_peak.get(name, 0), queued)
            await trio.sleep(SAMPLE_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        try:
            yield memory
        finally:
            if node.alive():
                memory.after = node.memory()
                memory.peak_rss = max(memory.peak_rss, memory.after)
                memory.hwm = node.memory("VmHWM")
            nursery.cancel_scope.cancel()


@dataclass
class _Phase:
    key: str
    name: str
    memory: _Memory
    cpu: float
    log: dict[str, int]
    first: Snapshot | None = None
    """The report at which every slot's first attempt was placed."""
    during: list[Snapshot] = field(default_factory=list)
    """Reports while the honest runs (or the sampling) went on."""
    final: Snapshot | None = None
    honest: dict[str, _Honest] = field(default_factory=dict)
    seconds: float = 0.0
    listen_drops: dict[str, int] = field(default_factory=dict)


@dataclass
class _Figures:
    entries: int = 0
    baseline_rss: int = 0
    baseline: dict[str, _Honest] = field(default_factory=dict)
    baseline_drops: dict[str, int] = field(default_factory=dict)
    phases: list[_Phase] = field(default_factory=list)
    node_alive: bool = True
    exit_code: int | None = None
    hwm_reset: bool = True
    log_tail: str = ""


@dataclass(frozen=True)
class Scenario:
    """One phase's attack."""

    key: str
    name: str
    kinds: dict[str, int]
    """Hostile connections of each kind."""
    reconnect: bool
    """Whether each is opened again when the node ends it."""
    sent: int = 0
    """Bytes a stalled frame or body sends of what it declares."""
    declared: int = DECLARED
    refused_pause: float = REFUSED_PAUSE
    honest_runs: int = 0
    """Honest runs per transport while the attack holds (none: memory only)."""


SCENARIOS = (
    Scenario("1", "1,000 silent WebSocket links", {"ws-silent": HOSTILE}, reconnect=False),
    Scenario(
        "2",
        "1,000 of the mix, reopened",
        MIX,
        reconnect=True,
        sent=STALL_BYTES,
        honest_runs=RUNS,
    ),
    Scenario(
        "2b",
        f"the same, refusals retried after {HASTY_PAUSE:g} s",
        MIX,
        reconnect=True,
        sent=STALL_BYTES,
        refused_pause=HASTY_PAUSE,
        honest_runs=RUNS,
    ),
    Scenario(
        "3",
        "20 x 15 MiB, all but 1 KiB sent",
        {"ws-stalled": BIG, "http-stalled": BIG},
        reconnect=False,
        sent=BIG_SENT,
    ),
    Scenario(
        "4",
        "4 HTTP bodies declaring 16 MiB, 100 B sent",
        {"http-stalled": SQUATTERS},
        reconnect=True,
        sent=100,
        declared=MAX_MESSAGE_BYTES,
        honest_runs=SQUAT_RUNS,
    ),
)


@dataclass(frozen=True)
class _Run:
    """What every phase works on."""

    figures: _Figures
    node: _Node
    attack_log: Path
    root: str
    expected: int


def _listen_drops() -> dict[str, int]:
    """The kernel's counts of connections dropped because a listen queue was full
    (``ListenOverflows``, ``ListenDrops`` of ``/proc/net/netstat``; machine-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return {name: int(table.get(name, 0)) for name in ("ListenOverflows", "ListenDrops")}
    return {}


async def _quiet(node: _Node) -> None:
    """Wait until the node has logged nothing for a second (:data:`QUIET_WITHIN` s at
    most): what the last phase left has been dealt with."""
    with trio.move_on_after(QUIET_WITHIN):
        size = -1
        while node.alive() and node.log.stat().st_size != size:
            size = node.log.stat().st_size
            await trio.sleep(1.0)


async def _phase(run: _Run, scenario: Scenario) -> _Phase:
    node = run.node
    cpu = node.cpu()
    drops = _listen_drops()
    began = time.perf_counter()
    node.new_log()
    async with _watching(node) as memory:
        phase = _Phase(scenario.key, scenario.name, memory, 0.0, {})
        async with _attacking(node, scenario, run.attack_log) as attack:
            phase.first = await attack.first_wave(sum(scenario.kinds.values()))
            await trio.sleep(0.5)  # what arrived with the last opening settles
            attack.window = phase.during
            if scenario.honest_runs:
                phase.honest = await _honest_runs(
                    node, run.root, run.expected, scenario.honest_runs
                )
            else:
                with trio.move_on_after(BIG_HOLD):
                    while True:
                        await attack.fresh()
            await attack.fresh()
            attack.window = None
            phase.final = await attack.stop()
    phase.seconds = time.perf_counter() - began
    phase.cpu = node.cpu() - cpu if node.alive() else float("nan")
    await _quiet(node)  # the node logs the connections' ends
    phase.log = _log_events(node.new_log())
    after = _listen_drops()
    phase.listen_drops = {name: after[name] - drops.get(name, 0) for name in after}
    run.figures.phases.append(phase)
    return phase


async def _bench(directory: Path) -> _Figures:
    figures = _Figures()
    data = directory / "node"
    root, expected = await _fill(data)
    figures.entries = expected
    async with _serving(data, directory / "node.log") as node:
        try:
            await trio.sleep(1.0)
            figures.baseline_rss = node.memory()
            drops = _listen_drops()
            figures.baseline = await _honest_runs(node, root, expected, RUNS)
            after = _listen_drops()
            figures.baseline_drops = {name: after[name] - drops.get(name, 0) for name in after}
            run = _Run(figures, node, directory / "attacker.log", root, expected)
            for scenario in SCENARIOS:
                await _quiet(node)
                await _phase(run, scenario)
        finally:
            figures.node_alive = node.alive()
            figures.hwm_reset = node.hwm_reset
            figures.log_tail = "\n".join(node.log.read_text(errors="replace").splitlines()[-15:])
    figures.exit_code = node.exit_code
    return figures


# == the bound ========================================================================


@dataclass(frozen=True)
class Tables:
    """What :func:`session_tables` measured: bytes, and entries of each table."""

    bytes: int
    pending: int
    """Handshakes awaiting their Finish in the responder's table."""
    sessions: int
    buckets: int
    """Handshake-rate buckets, per source and per link together."""


def _source(index: int) -> str:
    """A distinct source address for each index (as if from that many hosts)."""
    return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def session_tables() -> Tables:
    """Python memory the node's handshake and session tables take at their caps,
    measured with tracemalloc on the real structures, each entry from a source (and
    key) of its own, the costliest way to fill them: the handshake :class:`Responder`
    with :data:`DEFAULT_MAX_PENDING` handshakes awaiting their Finish, a
    :class:`SessionTable` with :data:`DEFAULT_MAX_SESSIONS` sessions, and the two
    handshake-rate tables (per source, per link) of :data:`DEFAULT_MAX_KEYS` buckets
    each. Key and address strings are fresh copies, as decoding a message makes them."""
    keys = [SigningKey.generate().public_key for _ in range(DEFAULT_MAX_PENDING)]
    session_keys = [SigningKey.generate().public_key for _ in range(DEFAULT_MAX_SESSIONS)]
    responder = Responder(SigningKey.generate())
    now = time.time()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index, key in enumerate(keys):
            init = HandshakeInit(
                public_key=key.encode().decode(),
                challenge=os.urandom(32),
                ephemeral=os.urandom(32),
                time=int(now),
            )
            responder.receive_init(init, now=now, source=_source(index))
            del init
        sessions = SessionTable()
        for index, key in enumerate(session_keys):
            sessions.add(
                os.urandom(32), key.encode().decode(), _source(index), now, key=os.urandom(32)
            )
        by_source, by_link = TokenBuckets(10.0, 20.0), TokenBuckets(10.0, 20.0)
        for index in range(DEFAULT_MAX_KEYS):
            by_source.allow(_source(index), now)
            by_link.allow(f"ws-in://{index + 1}", now)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return Tables(
        after - before, responder.pending_count, len(sessions), len(by_source) + len(by_link)
    )


@dataclass(frozen=True)
class Bound:
    """The pieces of :func:`memory_bound`, in bytes."""

    baseline_rss: int
    buffered: int
    connections: int
    per_connection: float
    holding_area: int
    session_tables: int

    @property
    def total(self) -> float:
        return (
            self.baseline_rss
            + self.buffered
            + self.connections * self.per_connection
            + self.holding_area
            + self.session_tables
        )


LISTENERS = 2
"""The node under attack serves WebSocket and HTTP: each listener has its own service,
and so its own session and pending-handshake tables."""

BUFFER_FACTOR = 2.5
"""Copies of a message's bytes a node may hold at once: its fragments, the joined
message, and the decoded entries (docs/security.md)."""


def memory_bound(
    baseline_rss: int,
    per_connection: float,
    session_tables: int,
    limits: ServerLimits | None = None,
) -> Bound:
    """The worst-case resident memory of a node under attack, with its limits, as
    docs/security.md gives it:

        baseline RSS (measured at start, idle, its data loaded)
        + BUFFER_FACTOR x max_buffered_bytes (message bytes held at once, node-wide:
          64 MiB; a whole message is briefly held as fragments, joined, and decoded)
        + max_connections (1,024) x per-connection overhead (measured: RSS growth
          with 1,000 idle accepted WebSocket links / links held)
        + the holding area's cap (``intake.MAX_HELD_BYTES``, counted as footprint)
        + the handshake and session tables at their caps (measured with
          tracemalloc: :func:`session_tables`), once per listener (LISTENERS)
    """
    limits = limits or ServerLimits()
    return Bound(
        baseline_rss=baseline_rss,
        buffered=int(BUFFER_FACTOR * limits.max_buffered_bytes),
        connections=limits.max_connections,
        per_connection=per_connection,
        holding_area=MAX_HELD_BYTES,
        session_tables=LISTENERS * session_tables,
    )


# == printing =========================================================================


def _mib(size: float) -> str:
    return f"{size / MIB:,.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _spread(values: Sequence[float]) -> tuple[str, str, str]:
    if not values:
        return "-", "-", "-"
    return _ms(statistics.median(values)), _ms(max(values)), _ms(min(values))


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{why} {n}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _print(figures: _Figures, tables: Tables) -> None:
    limits = ServerLimits()
    print(
        f"node: eidetica serve, default limits: max_connections {limits.max_connections}, "
        f"per source {limits.max_connections_per_source}, handshake_timeout "
        f"{limits.handshake_timeout:g} s, message_timeout {limits.message_timeout:g} s, "
        f"max_buffered_bytes {_mib(limits.max_buffered_bytes)} MiB"
    )
    print(
        f"tree: {figures.entries} entries; baseline RSS {_mib(figures.baseline_rss)} MiB; "
        f"{RUNS} honest runs per transport and phase; attackers from "
        f"{SOURCES[0]}-{SOURCES[-1]}"
    )
    phases = {phase.key: phase for phase in figures.phases}
    honest = [("baseline", figures.baseline)] + [
        (f"phase {phase.key}", phase.honest) for phase in figures.phases if phase.honest
    ]
    rows = []
    for transport in ("ws", "http"):
        for label, by_transport in honest:
            runs = by_transport.get(transport, _Honest())
            total, handshake = _spread(runs.total), _spread(runs.handshake)
            tried = len(runs.total) + sum(runs.failures.values())
            rows.append(
                [f"{transport} {label}", f"{len(runs.total)}/{tried}", *handshake[:2], *total]
            )
    print_table(
        "Honest handshake + sync of the whole tree (ms, a fresh in-memory peer per run; "
        "phases below)",
        ["transport, phase", "ok", "hs median", "hs max", "median", "max", "min"],
        rows,
    )
    ratio_rows = []
    for transport in ("ws", "http"):
        base = figures.baseline.get(transport, _Honest())
        for label, by_transport in honest[1:]:
            under = by_transport.get(transport, _Honest())
            if base.total and under.total:
                median = statistics.median(base.total)
                ratio_rows.append(
                    [
                        f"{transport} {label}",
                        f"{statistics.median(under.total) / median:.2f}",
                        f"{max(under.total) / max(base.total):.2f}",
                        f"{max(under.total) / median:.2f}",
                    ]
                )
            else:
                ratio_rows.append([f"{transport} {label}", "-", "-", "-"])
    print_table(
        "Under attack / baseline (handshake + sync, same run)",
        ["transport, phase", "median/median", "max/max", "max/baseline median"],
        ratio_rows,
    )
    failures = []
    for label, by_transport in honest:
        for transport, runs in by_transport.items():
            failures += [[f"{transport} {label}", str(n), why] for why, n in runs.failures.items()]
    if failures:
        print_table("Honest runs that failed", ["transport, phase", "runs", "error"], failures)
    drops = ", ".join(f"{name} {n}" for name, n in figures.baseline_drops.items())
    print(f"\nbaseline: kernel listen-queue drops (machine-wide): {drops or '-'}")

    for phase in figures.phases:
        _print_phase(phase)

    one = phases.get("1")
    held = sum(one.first.first_held.values()) if one and one.first else 0
    growth = one.memory.peak_rss - one.memory.before if one else 0
    per_connection = growth / held if held else float("nan")
    bound = memory_bound(figures.baseline_rss, per_connection, tables.bytes)
    print_table(
        "Worst-case memory (placeholder formula, default limits; MiB)",
        ["piece", "MiB", "from"],
        [
            ["baseline RSS", _mib(bound.baseline_rss), "measured at start, idle"],
            [
                f"{BUFFER_FACTOR} x max_buffered_bytes",
                _mib(bound.buffered),
                "ServerLimits default",
            ],
            [
                f"max_connections x per connection ({bound.connections:,} x "
                f"{bound.per_connection / 1024:,.1f} KiB)",
                _mib(bound.connections * bound.per_connection),
                f"phase 1: RSS growth {_mib(growth)} MiB / {held:,} links",
            ],
            ["holding area", _mib(bound.holding_area), "intake.MAX_HELD_BYTES (footprint)"],
            [
                f"session tables x {LISTENERS} listeners",
                _mib(bound.session_tables),
                "tracemalloc, tables at caps",
            ],
            ["bound", _mib(bound.total), "sum"],
        ],
    )
    peaks = [
        [
            f"{phase.key}: {phase.name}",
            _mib(phase.memory.before),
            _mib(phase.memory.peak_rss),
            _mib(phase.memory.hwm),
            f"{max(phase.memory.peak_rss, phase.memory.hwm) / bound.total:.2f}",
        ]
        for phase in figures.phases
    ]
    print_table(
        "Node memory by phase (MiB) against the bound"
        + ("" if figures.hwm_reset else " (VmHWM could not be reset: peak since start)"),
        ["phase", "RSS before", "peak RSS sampled", "VmHWM", "peak / bound"],
        peaks,
    )
    three = phases.get("3")
    if three is not None:
        growth3 = max(three.memory.peak_rss, three.memory.hwm) - three.memory.before
        print(
            f"\nphase 3: RSS {_mib(three.memory.before)} MiB before, "
            f"{_mib(three.memory.peak_rss)} MiB peak; growth {_mib(growth3)} MiB = "
            f"{growth3 / ServerLimits().max_buffered_bytes:.2f} x max_buffered_bytes "
            f"(without the budget: 20 x 15 MiB = {_mib(20 * DECLARED)} MiB)"
        )
    print(
        f"\nnode: {'running' if figures.node_alive else 'DIED'} at the end; "
        f"exit code after SIGTERM: {figures.exit_code}"
    )
    if not figures.node_alive or figures.exit_code not in (0, None):
        print("last lines of its log:\n" + figures.log_tail)


def _print_phase(phase: _Phase) -> None:
    first, final = phase.first, phase.final
    rows = []
    kinds = [kind for kind in KINDS if first and kind in first.attempts]
    for kind in kinds:
        assert first is not None
        open_during = [snapshot.open.get(kind, 0) for snapshot in phase.during]
        held = final.held_seconds.get(kind, []) if final else []
        linger = final.linger_seconds.get(kind, []) if final else []
        rows.append(
            [
                kind,
                str(first.first_held.get(kind, 0)),
                _reasons(first.first_refused.get(kind, {})) or "0",
                f"{min(open_during, default=0)}-{max(open_during, default=0)}",
                str(final.attempts.get(kind, 0)) if final else "?",
                _reasons(final.refused.get(kind, {})) if final else "?",
                _reasons(final.cut.get(kind, {})) if final else "?",
                "/".join(f"{value:.1f}" for value in held) or "-",
                "/".join(f"{value:.1f}" for value in linger) or "-",
            ]
        )
    open_all = [sum(snapshot.open.values()) for snapshot in phase.during]
    rows.append(
        [
            "all",
            str(sum(first.first_held.values())) if first else "?",
            str(sum(sum(why.values()) for why in first.first_refused.values())) if first else "?",
            f"{min(open_all, default=0)}-{max(open_all, default=0)}",
            str(sum(final.attempts.values())) if final else "?",
            str(sum(sum(why.values()) for why in final.refused.values())) if final else "?",
            str(sum(sum(why.values()) for why in final.cut.values())) if final else "?",
            "",
            "",
        ]
    )
    seconds = f"{first.elapsed:.1f}" if first else "?"
    print_table(
        f"Phase {phase.key}: {phase.name}; first wave placed in {seconds} s",
        [
            "kind",
            "1st held",
            "1st refused",
            "connected",
            "attempts",
            "refused (all)",
            "cut by node",
            "held s min/med/max",
            "linger s",
        ],
        rows,
    )
    logged = ", ".join(f"{name} {n}" for name, n in phase.log.items() if n)
    drops = ", ".join(f"{name} {n}" for name, n in phase.listen_drops.items())
    queues = ", ".join(
        f"{name} {peak}/{phase.memory.backlog.get(name, '?')}"
        for name, peak in phase.memory.queue_peak.items()
    )
    cpu = final.cpu if final else float("nan")
    print(
        f"{phase.seconds:.1f} s; node CPU {phase.cpu:.1f} s, attacker CPU {cpu:.1f} s\n"
        f"longest accept queue sampled / its limit: {queues or '-'}; "
        f"kernel listen-queue drops (machine-wide): {drops or '-'}\n"
        f"node log: {logged or 'nothing'}"
    )


def main() -> None:
    _raise_descriptor_limit()
    began = time.perf_counter()
    tables = session_tables()
    print(
        f"setup: session tables at their caps measured: {tables.pending:,} pending "
        f"handshakes + {tables.sessions:,} sessions + {tables.buckets:,} rate buckets = "
        f"{_mib(tables.bytes)} MiB "
        f"({time.perf_counter() - began:.1f} s)"
    )
    with tempfile.TemporaryDirectory(prefix="eidetica-hostile-") as directory:
        figures = trio.run(_bench, Path(directory))
    _print(figures, tables)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        sys.exit(_attack_main(sys.argv[2]))
    main()
