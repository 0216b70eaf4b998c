"""A pure engine to drive in tests, with no event loop, and a reply that records."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from eidetica.actors.engine import effects as fx
from eidetica.actors.engine import events as ev
from eidetica.actors.engine.core import Engine, EngineConfig, Restored

ME = "ed25519:M"
"""This node's key; it sorts after A and B and before Z, for the link rule."""
TREE = "a" * 64
SYNC_TREE = "5" * 64
CONFIG = EngineConfig(redial_min=1.0, redial_max=60.0, jitter=0.0, max_strangers=3)


@dataclass
class FakeReply:
    """Records every answer: a reply must get exactly one."""

    answers: list[tuple[bool, Any]] = field(default_factory=list)

    def set(self, value: Any) -> None:
        self.answers.append((True, value))

    def fail(self, error: BaseException) -> None:
        self.answers.append((False, error))


def engine(
    peers: tuple[Restored, ...] = (), removed: tuple[str, ...] = ()
) -> tuple[Engine, list[fx.Effect]]:
    """An engine restored from ``peers``, and what restoring it asked for."""
    made = Engine(
        ME,
        families={"ws": "ws", "ws-in": "ws", "sim": "sim", "http": "http"},
        reply_schemes={"ws-in"},
        config=CONFIG,
        rng=random.Random(0),
    )
    return made, made.restore(peers, {}, removed, SYNC_TREE)


def answered(effects: list[fx.Effect]) -> list[tuple[bool, Any]]:
    """Carry out the Answer and Fail effects, as the shell would; what they said."""
    said: list[tuple[bool, Any]] = []
    for effect in effects:
        if isinstance(effect, fx.Answer):
            effect.reply.set(effect.value)
            said.append((True, effect.value))
        elif isinstance(effect, fx.Fail):
            effect.reply.fail(effect.error)
            said.append((False, effect.error))
    return said


def of(kind: type[Any], effects: list[fx.Effect]) -> list[Any]:
    """The effects of one kind, in order."""
    return [effect for effect in effects if isinstance(effect, kind)]


def up(made: Engine, peer: str, address: str, now: float = 0.0) -> list[fx.Effect]:
    """Bring ``peer`` up over a link we dialled at ``address``."""
    return made.handle(ev.LinkUp(address, peer), now)
