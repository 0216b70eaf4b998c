"""A node's read-only pages: liveness, readiness, metrics, and a live status page.

Every page is a plain ``GET`` with no side effect and no secret in it (no device key,
no session, no entry's content: keys, addresses, counts, tips and times):

- ``/health``: alive. 200 ``{"status": "ok", ...}`` while the engine runs and
  storage answers; 503 otherwise.
- ``/ready``: ready for work. 200 while healthy, not stopping, and every server the
  node was asked to start is listening (a node that listens nowhere is ready once
  its engine runs); 503 otherwise. Both carry the details as JSON.
- ``/metrics``: :mod:`eidetica.actors.metrics`, in Prometheus's text format.
- ``/status.json``: the node's key, servers, peers, trees with their lag, and the
  last :data:`RECENT` syncs, which the status page (``/``) polls every second.

Where they are served: an HTTP listener answers them beside ``POST /api/v0``; a
WebSocket listener answers a plain ``GET`` of these paths (one without an
``Upgrade: websocket``) before any upgrade; and the control socket answers the
``health``, ``ready`` and ``metrics`` requests of ``eidetica health``, so a node that
listens nowhere offers them to its own user.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from importlib import resources

import msgspec

import eidetica.events as news
from eidetica.actors.engine.status import SyncStatus
from eidetica.actors.metrics import CONTENT_TYPE as METRICS_TYPE
from eidetica.actors.metrics import NodeMetrics
from eidetica.actors.transports.base import AdminAnswer
from eidetica.protocol.intake import Intake

RECENT = 50
"""Syncs (finished or failed) the status page shows."""

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"

_PAGE_HEADERS = "no-store"


class Health(msgspec.Struct, frozen=True):
    """What ``/health`` and ``/ready`` answer (and ``eidetica health`` prints)."""

    status: str
    """``ok``, or what is wrong: ``unavailable`` (not healthy), ``not-ready``."""
    key: str
    engine: str
    """``starting``, ``running``, ``stopping`` or ``stopped``."""
    storage: bool
    servers: dict[str, bool]
    """Each server's address and whether it listens now."""
    crashed: list[str]
    problems: list[str]
    """What is wrong, one line each, with what to do."""


STATUS_TTL = 1.0
"""Seconds a status read for the pages is reused while nothing changes."""


class Admin:
    """Answers a node's read-only pages; see the module docstring.

    It reads the node through callables (its key, its status, its engine's state,
    its storage's health), so it knows nothing of the supervisor that made it.
    """

    def __init__(
        self,
        key: str,
        status: Callable[[], SyncStatus],
        engine: Callable[[], str],
        storage: Callable[[], bool],
        intake: Intake,
        *,
        changes: Callable[[], object] = lambda: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._wall_clock = wall_clock
        self._read_status = status
        self._changes = changes
        self._cached: tuple[object, float, SyncStatus] | None = None
        self._engine = engine
        self._storage = storage
        self.metrics = NodeMetrics(self._status, intake)
        self.recent: deque[tuple[float, news.SyncFinished | news.SyncFailed]] = deque(maxlen=RECENT)
        """The last syncs, each with the wall-clock time it was heard of."""

    def _status(self) -> SyncStatus:
        """The node's status, worked out again only if something changed (``changes``
        says so: events published, batches stored) or :data:`STATUS_TTL` passed. The
        pages need no session, so anyone who reaches a listener may ask for them in a
        loop: with nothing new, each answer costs no walk of the trees."""
        mark, now = self._changes(), time.monotonic()
        cached = self._cached
        if cached is None or cached[0] != mark or now - cached[1] > STATUS_TTL:
            cached = self._cached = (mark, now, self._read_status())
        return cached[2]

    def on_event(self, event: news.Event) -> None:
        """The bus listener: count it, and keep the last syncs for the page."""
        self.metrics.on_event(event)
        if isinstance(event, news.SyncFinished | news.SyncFailed):
            self.recent.append((self._wall_clock(), event))

    def health(self) -> Health:
        """Alive: the engine runs and storage answers."""
        engine = self._engine()
        storage = self._storage()
        problems = []
        if engine != "running":
            problems.append(f"the sync engine is {engine}: start the node ('eidetica serve')")
        if not storage:
            problems.append("storage does not answer: check the data directory and its disk")
        return self._answer(engine, storage, None, problems)

    def ready(self) -> Health:
        """Ready: healthy, and every server listens."""
        engine = self._engine()
        storage = self._storage()
        status = self._status()
        problems = []
        if engine != "running":
            problems.append(f"the sync engine is {engine}: start the node ('eidetica serve')")
        if not storage:
            problems.append("storage does not answer: check the data directory and its disk")
        for server in status.servers:
            if not server.listening:
                problems.append(
                    f"the server at {server.address} is not listening ({server.last_error}):"
                    " it restarts by itself; check the log"
                )
        return self._answer(engine, storage, status, problems, "not-ready")

    def _answer(
        self,
        engine: str,
        storage: bool,
        status: SyncStatus | None,
        problems: list[str],
        bad: str = "unavailable",
    ) -> Health:
        status = status or self._status()
        return Health(
            status="ok" if not problems else bad,
            key=self._key,
            engine=engine,
            storage=storage,
            servers={server.address: server.listening for server in status.servers},
            crashed=list(status.crashed),
            problems=problems,
        )

    def snapshot(self) -> dict[str, object]:
        """What ``/status.json`` answers: plain data, every string as the node has it
        (the page escapes them all: some come from peers)."""
        status = self._status()
        return {
            "key": self._key,
            "now": self._wall_clock(),
            "engine": self._engine(),
            "status": msgspec.to_builtins(status),
            "recent": [
                {**msgspec.to_builtins(event), "at": at} for at, event in reversed(self.recent)
            ],
        }

    def answer(self, path: str) -> AdminAnswer | None:
        """The answer for a ``GET`` of ``path``; None if it is no page of ours."""
        match path:
            case "/health":
                return _health_answer(self.health())
            case "/ready":
                return _health_answer(self.ready())
            case "/metrics":
                return AdminAnswer(200, METRICS_TYPE, self.metrics.exposition())
            case "/status.json":
                return AdminAnswer(200, JSON_TYPE, msgspec.json.encode(self.snapshot()))
            case "/":
                return AdminAnswer(200, HTML_TYPE, page())
            case _:
                return None


def _health_answer(health: Health) -> AdminAnswer:
    return AdminAnswer(
        200 if health.status == "ok" else 503, JSON_TYPE, msgspec.json.encode(health)
    )


_page: bytes | None = None


def page() -> bytes:
    """The status page: one HTML file with its script and style inline."""
    global _page  # noqa: PLW0603 -- read once, then kept
    if _page is None:
        _page = resources.files("eidetica.actors").joinpath("status_page.html").read_bytes()
    return _page
