"""What the engine asks of a peer actor: jobs, done one at a time, in order."""

from __future__ import annotations

from dataclasses import dataclass

from eidetica.actors.engine.events import Replier
from eidetica.actors.engine.retries import RetryItem


@dataclass(frozen=True, slots=True)
class SyncJob:
    """Sync these trees fully, both ways, then answer.

    The actor syncs only those the peer may read now: a relationship alone never
    leaks a tree."""

    trees: tuple[str, ...]
    reply: Replier | None
    common: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per tree, the tips both sides held after the last sync (the cursor)."""


@dataclass(frozen=True, slots=True)
class PushJob:
    """Offer these stored entries of a tree to the peer (a commit, forwarded entries,
    a retry); the actor reads their bytes when it gets to the job."""

    tree: str
    ids: tuple[str, ...]
    retry: RetryItem | None = None


@dataclass(frozen=True, slots=True)
class ProbeJob:
    """Check the peer answers, with a fresh handshake (the connection check)."""


Job = SyncJob | PushJob | ProbeJob
