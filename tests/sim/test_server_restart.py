"""A server that fails for a reason of its own is started again, with backoff, at the
address it had; it is counted in status, and the engine never notices."""

from __future__ import annotations

import itertools

import trio
import trio.testing

import eidetica
from eidetica.actors.sync import open_sync
from eidetica.actors.transports.base import Handler


class BrokenListener:
    """A transport whose listener breaks ``breaks`` times, a while after it started;
    it records where and when it was asked to serve."""

    scheme = "flaky"

    def __init__(self, breaks: int) -> None:
        self.breaks = breaks
        self.served: list[tuple[str, float]] = []
        self.serving = trio.Event()

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.served.append((address, trio.current_time()))
        task_status.started("flaky://bound:7")
        if len(self.served) > self.breaks:
            self.serving.set()
            await trio.sleep_forever()
        await trio.sleep(5)
        raise OSError("the listening socket broke")

    async def request(self, address: str, data: bytes) -> bytes:
        raise NotImplementedError


async def test_a_broken_listener_is_restarted_with_backoff_at_its_bound_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = BrokenListener(breaks=3)
    with trio.fail_after(120):
        async with (
            eidetica.open_instance(None) as inst,
            open_sync(inst, transports={"flaky": flaky}) as sync,
        ):
            assert await sync.start_server("flaky://any:0") == "flaky://bound:7"
            await flaky.serving.wait()
            status = await sync.status()
            assert await sync.peers() == []  # the engine runs on
    addresses = [address for address, _ in flaky.served]
    assert addresses == ["flaky://any:0"] + ["flaky://bound:7"] * 3
    starts = [at for _, at in flaky.served]
    waits = [later - earlier - 5 for earlier, later in itertools.pairwise(starts)]
    assert [round(wait) for wait in waits] == [1, 2, 4]
    assert status.server_restarts["flaky://bound:7"].restarts == 3
    assert "listening socket broke" in str(status.server_restarts["flaky://bound:7"].last_error)
