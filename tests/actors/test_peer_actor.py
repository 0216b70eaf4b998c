"""The peer actor on its own: a job queued right after a new link goes out on it."""

from __future__ import annotations

import trio
import trio.testing

import eidetica
from eidetica.actors import commands as cmd
from eidetica.actors.engine.breaker import BreakerConfig
from eidetica.actors.engine.jobs import Job, ProbeJob
from eidetica.actors.peer import PeerActor


class FakeLink:
    """A link that records which one a probe went out on."""

    transport = object()

    def __init__(self, address: str, used: list[str]) -> None:
        self.address = address
        self._used = used

    async def handshake(self, instance: object, *, expected_key: str | None = None) -> str:
        self._used.append(self.address)
        return "k"


async def probe_after_a_new_link(inst: eidetica.Instance) -> tuple[str, list[str]]:
    """Hand the actor a link and a probe, then a new link and a probe in one step (as
    the shell carries out UseLink then Queue); which link the second probe used, and
    which links the actor closed."""
    used: list[str] = []
    closed: list[str] = []
    jobs, inbox = trio.open_memory_channel[Job](8)
    report, _ = trio.open_memory_channel[cmd.Command](100)
    actor = PeerActor(inst, "k", report, BreakerConfig(), closed.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run, inbox)
        actor.hand(FakeLink("ws://old", used), close_previous=False)  # type: ignore[arg-type]
        jobs.send_nowait(ProbeJob())
        await trio.testing.wait_all_tasks_blocked()
        used.clear()
        actor.hand(FakeLink("ws://new", used), close_previous=True)  # type: ignore[arg-type]
        jobs.send_nowait(ProbeJob())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return used[0], closed


async def test_a_job_queued_right_after_a_new_link_goes_out_on_it() -> None:
    async with eidetica.open_instance(None) as inst:
        for _ in range(40):  # the old channel hand-over lost this race about half the time
            link, closed = await probe_after_a_new_link(inst)
            assert (link, closed) == ("ws://new", ["ws://old"])
