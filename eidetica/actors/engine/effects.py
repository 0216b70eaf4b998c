"""What the engine asks its shell to do, in order: the shell carries each out and
tells the engine what came of it as new events.

Persisting effects come before the answer that depends on them, so a caller hears
"done" only once the change is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from eidetica.actors.engine.events import Replier
from eidetica.actors.engine.jobs import Job
from eidetica.actors.engine.retries import RetryItem
from eidetica.errors import EideticaError
from eidetica.events import Event


@dataclass(frozen=True, slots=True)
class Answer:
    reply: Replier
    value: Any


@dataclass(frozen=True, slots=True)
class Fail:
    reply: Replier
    error: EideticaError


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial ``address`` after ``after`` seconds and prove ``peer`` there (any key, if
    None). Its outcome comes back as ``LinkUp`` or
    ``DialFailed`` carrying ``reply`` and ``chosen``."""

    address: str
    peer: str | None
    after: float = 0.0
    reply: Replier | None = None
    chosen: bool = False
    owned: bool = False
    """The peer's own redial: run by its actor, replacing its pending dial."""


@dataclass(frozen=True, slots=True)
class StopDial:
    """Cancel the peer's pending dial, if any: it is linked by another way."""

    peer: str


@dataclass(frozen=True, slots=True)
class StartPeer:
    """Start the peer's actor (its own cancel scope, job inbox and dials)."""

    peer: str


@dataclass(frozen=True, slots=True)
class StopPeer:
    """Cancel the peer's actor: its jobs' callers are told, its dials stop, and its
    link is closed if ``close_link`` (we dialled it)."""

    peer: str
    close_link: bool = False


@dataclass(frozen=True, slots=True)
class UseLink:
    """Hand the link that came up at ``address`` to the peer's actor; it moves to it
    after the job at hand, closing the one it had if ``close_previous``."""

    peer: str
    address: str
    close_previous: bool


@dataclass(frozen=True, slots=True)
class DropLink:
    """The link that came up at ``address`` is not used: close it if ``close`` (we
    dialled it), or leave it for the peer that dialled it to close."""

    address: str
    close: bool


@dataclass(frozen=True, slots=True)
class Queue:
    """Give the peer's actor a job."""

    peer: str
    job: Job


@dataclass(frozen=True, slots=True)
class ToRetry:
    """Hand a failed push to the retry actor, the queue's one owner."""

    item: RetryItem


@dataclass(frozen=True, slots=True)
class ForgetRetries:
    """Tell the retry actor to drop every push to ``peer``."""

    peer: str


PersistOp = Literal[
    "add_peer",
    "remove_peer",
    "set_removed",
    "add_relationship",
    "remove_relationship",
    "set_cursor",
    "record_sync",
    "record_push",
    "record_served",
    "keep_retry",
    "drop_retry",
]


@dataclass(frozen=True, slots=True)
class Persist:
    """Write to the sync state: ``op`` names the ``SyncState`` method
    (``eidetica.actors.state``), ``args`` its arguments."""

    op: PersistOp
    args: tuple[Any, ...] = ()
    keywords: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Publish:
    """The view the services read changed: publish ``engine.view()`` again."""


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell the node's users: publish ``event`` on the event bus."""

    event: Event


Effect = (
    Answer
    | Fail
    | Dial
    | StopDial
    | StartPeer
    | StopPeer
    | UseLink
    | DropLink
    | Queue
    | ToRetry
    | ForgetRetries
    | Persist
    | Publish
    | Announce
)
