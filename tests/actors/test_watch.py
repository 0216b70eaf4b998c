"""The watcher's loop, on a mock clock: it takes in the peer's commits as they come,
has a tree synced when the news is too big to carry, watches a newly related tree,
proves itself again to a peer that forgot it, backs off from a peer that fails or
answers at once, and stops for a peer that does not know watches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import pytest
import trio
import trio.testing

from eidetica.actors import commands as cmd
from eidetica.actors.service import SyncService
from eidetica.actors.transports.admission import ServerLimits
from eidetica.actors.transports.base import Origin
from eidetica.actors.watch import run_watch
from eidetica.errors import TransportError
from eidetica.protocol.codec import JSON
from eidetica.protocol.messages import ErrorReply
from tests.actors.watchers import Scene, scene
from tests.waiting import stored


async def supervise(
    receive: trio.MemoryReceiveChannel[cmd.Command], s: Scene, seen: list[cmd.Command]
) -> None:
    """What the supervisor does with the loop's reports: sync the trees it names."""
    async for command in receive:
        seen.append(command)
        if isinstance(command, cmd.TreesChanged):
            for tree in command.trees:
                await s.link.sync_tree(s.watcher, tree)
            assert command.reply is not None  # the loop waits for its answer
            command.reply.set(None)


async def start_loop(
    nursery: trio.Nursery, s: Scene, trees: Callable[[], Collection[str]]
) -> list[cmd.Command]:
    """Run the watcher's loop on its link and a stand-in supervisor; what the loop
    reported will be in the list returned."""
    send, receive = trio.open_memory_channel[cmd.Command](16)
    seen: list[cmd.Command] = []
    nursery.start_soon(supervise, receive, s, seen)
    nursery.start_soon(run_watch, s.watcher, s.link, trees, send)
    return seen


async def test_the_loop_takes_in_the_peers_commits_as_they_come(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s, trio.open_nursery() as nursery:
        seen = await start_loop(nursery, s, lambda: {s.tree.root_id})
        await stored(s.watcher, (await s.tree.tips())[0])  # the tree came with an answer
        for value in range(3):
            began = trio.current_time()
            tip = await s.commit(s.tree, value)
            await stored(s.watcher, tip)
            assert trio.current_time() == began
        nursery.cancel_scope.cancel()
    # Each answer carried the entries: no sync was needed; received ones go on.
    assert [type(command) for command in seen] == [cmd.EntriesReceived] * 4


async def test_the_loop_has_a_tree_synced_when_its_news_is_too_big_to_carry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        for value in range(70):
            await s.commit(s.tree, value)
        async with trio.open_nursery() as nursery:
            seen = await start_loop(nursery, s, lambda: {s.tree.root_id})
            await stored(s.watcher, (await s.tree.tips())[0])
            await trio.sleep(100)  # then the loop holds watches: nothing more to do
            requests = s.transport.requests
            nursery.cancel_scope.cancel()
        (changed,) = seen
        assert isinstance(changed, cmd.TreesChanged) and changed.trees == (s.tree.root_id,)
        assert requests <= 2 + 100 // 20 + 1  # the watch, the sync, then one per hold


async def test_a_tree_related_while_a_watch_is_held_is_watched_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    related: set[str] = set()
    async with scene() as s, trio.open_nursery() as nursery:
        await start_loop(nursery, s, lambda: related)
        await trio.sleep(5)
        related.add(s.tree.root_id)
        began = trio.current_time()
        await stored(s.watcher, (await s.tree.tips())[0])
        assert trio.current_time() - began <= 1.0
        nursery.cancel_scope.cancel()


async def test_the_loop_proves_itself_again_to_a_peer_that_forgot_its_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s, trio.open_nursery() as nursery:
        await start_loop(nursery, s, lambda: {s.tree.root_id})
        await stored(s.watcher, (await s.tree.tips())[0])
        # The node restarts its service: every session is forgotten, watches end.
        restarted = SyncService(s.node, JSON, watching=s.watching)
        s.transport.handler = restarted.handle
        await trio.sleep(30)
        began = trio.current_time()
        tip = await s.commit(s.tree, 1)
        await stored(s.watcher, tip)
        assert trio.current_time() == began
        nursery.cancel_scope.cancel()


async def test_the_loop_backs_off_from_a_peer_that_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def unreachable(data: bytes, origin: Origin) -> bytes:
        raise TransportError("nobody answers")

    async with scene() as s, trio.open_nursery() as nursery:
        s.transport.handler = unreachable
        await start_loop(nursery, s, lambda: {s.tree.root_id})
        await trio.sleep(200)
        # 1, 2, 4 ... 60, 60 s apart (and up to 10% more): not a tight loop.
        assert 6 <= s.transport.requests <= 9
        nursery.cancel_scope.cancel()


async def test_the_loop_backs_off_from_empty_answers_that_come_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene(ServerLimits(watch_hold=0.01)) as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        before = s.transport.requests
        async with trio.open_nursery() as nursery:
            await start_loop(nursery, s, lambda: {s.tree.root_id})
            await trio.sleep(200)
            assert 6 <= s.transport.requests - before <= 9
            nursery.cancel_scope.cancel()


async def test_the_loop_stops_for_a_peer_that_does_not_know_watches(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def older(data: bytes, origin: Origin) -> bytes:
        answer = ErrorReply(code="unknown-message", message="unknown message type 'watch'")
        return JSON.encode(answer, JSON.decode(data).id)

    async with scene() as s:
        s.transport.handler = older
        send, _ = trio.open_memory_channel[cmd.Command](1)
        with caplog.at_level(logging.INFO, logger="eidetica.actors.watch"):
            with trio.fail_after(1):
                await run_watch(s.watcher, s.link, lambda: {s.tree.root_id}, send)
        assert s.transport.requests == 1
        (record,) = caplog.records
        assert "does not know watches" in record.getMessage()
