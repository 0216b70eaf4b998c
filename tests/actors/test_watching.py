"""The server's hold of a watch, on a mock clock: answered at once when there is
news, held until there is, empty when the wait ends; never a word of a tree the
watcher may not read; bounded per session and per node."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from eidetica.actors.transports.admission import ServerLimits
from eidetica.errors import RemoteError
from eidetica.protocol.messages import Ack, Changed, SendEntries
from tests.actors.watchers import Scene, scene

NOTHING = "0" * 64
"""A tree id no node holds."""


async def watch_in_background(
    nursery: trio.Nursery, scene: Scene, trees: list[tuple[str, list[str]]], wait: int = 600
) -> list[tuple[float, Changed]]:
    """Start a watch; its answer, and when it came, will be in the list returned."""
    answers: list[tuple[float, Changed]] = []

    async def watch() -> None:
        answer = await scene.link.watch(trees, wait=wait)
        answers.append((trio.current_time(), answer))

    nursery.start_soon(watch)
    await trio.testing.wait_all_tasks_blocked()
    return answers


async def test_a_watch_is_answered_at_once_with_what_the_watcher_lacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        began = trio.current_time()
        answer = await s.link.watch([(s.tree.root_id, [])], wait=20)
        assert trio.current_time() == began
        (news,) = answer.trees
        assert news.tree == s.tree.root_id and list(news.tips) == await s.tree.tips()
        # The root and the grant: the node could tell exactly what the watcher lacks.
        receipt = await s.watcher.receive(s.tree.root_id, news.entries)
        assert len(receipt.stored) == 2 and not receipt.rejected


async def test_a_watch_is_held_until_a_commit_and_answered_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        tips = await s.tree.tips()
        async with trio.open_nursery() as nursery:
            answers = await watch_in_background(nursery, s, [(s.tree.root_id, tips)])
            await trio.sleep(5)
            assert not answers and s.watching.held == 1
            tip = await s.commit(s.tree, 1)
        ((when, answer),) = answers
        assert when == pytest.approx(trio.current_time())
        (news,) = answer.trees
        assert news.tips == (tip,) and len(news.entries) == 1
        assert s.watching.held == 0


async def test_a_watch_with_no_news_ends_empty_at_its_wait_or_the_servers_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene(ServerLimits(watch_hold=20, message_timeout=30)) as s:
        tips = await s.tree.tips()
        for asked, held in [(3, 3.0), (600, 20.0)]:
            began = trio.current_time()
            answer = await s.link.watch([(s.tree.root_id, tips)], wait=asked)
            assert answer.trees == ()
            assert trio.current_time() - began == pytest.approx(held)
    # Three quarters of the time the HTTP server gives a silent connection, at most.
    async with scene(ServerLimits(watch_hold=20, message_timeout=8)) as s:
        began = trio.current_time()
        await s.link.watch([(s.tree.root_id, await s.tree.tips())], wait=600)
        assert trio.current_time() - began == pytest.approx(6.0)


async def test_a_tree_the_watcher_may_not_read_is_never_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        async with trio.open_nursery() as nursery:
            answers = await watch_in_background(
                nursery, s, [(s.secret.root_id, []), (NOTHING, [])], wait=10
            )
            await s.commit(s.secret, 1)
            await trio.sleep(1)
            assert not answers
        ((_, answer),) = answers
        assert answer.trees == ()  # as for a tree that does not exist
        # Beside a readable tree with news, the secret one is left out.
        answer = await s.link.watch([(s.secret.root_id, []), (s.tree.root_id, [])], wait=10)
        assert [news.tree for news in answer.trees] == [s.tree.root_id]


async def test_entries_the_watcher_pushes_do_not_wake_its_own_watch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        mine = await s.watcher.open_tree(s.tree.root_id)
        async with trio.open_nursery() as nursery:
            answers = await watch_in_background(nursery, s, [(s.tree.root_id, await mine.tips())])
            pushed = await s.commit(mine, 1)
            raw = s.watcher.backend.get(pushed)
            assert raw is not None
            await s.link.call(SendEntries(tree=s.tree.root_id, entries=(raw.raw,)), Ack)
            await trio.sleep(5)
            assert not answers  # the node's tip is the watcher's own entry
            tip = await s.commit(s.tree, 2)
        ((_, answer),) = answers
        (news,) = answer.trees
        assert news.tips == (tip,) and len(news.entries) == 1


async def test_a_tree_the_node_pushes_to_the_watcher_itself_is_not_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pushed: set[tuple[str, str]] = set()
    async with scene(pushes=lambda peer, tree: (peer, tree) in pushed) as s:
        pushed.add((s.watcher.public_key, s.tree.root_id))
        answer = await s.link.watch([(s.tree.root_id, [])], wait=5)
        assert answer.trees == ()
        pushed.clear()
        answer = await s.link.watch([(s.tree.root_id, [])], wait=5)
        assert [news.tree for news in answer.trees] == [s.tree.root_id]


async def test_the_entries_of_an_answer_are_few_and_exact_or_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        mine = await s.watcher.open_tree(s.tree.root_id)
        # The watcher names a tip the node lacks: only a sync can tell what it needs.
        own = await s.commit(mine, 1)
        answer = await s.link.watch([(s.tree.root_id, [own])], wait=5)
        (news,) = answer.trees
        assert news.entries == ()
        # Past 64 entries, the watcher is told to sync instead.
        tips = await s.tree.tips()
        for value in range(65):
            await s.commit(s.tree, value)
        answer = await s.link.watch([(s.tree.root_id, tips)], wait=5)
        (news,) = answer.trees
        assert news.tips == tuple(await s.tree.tips()) and news.entries == ()


async def test_watches_past_either_cap_are_answered_busy_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(max_watches=3, max_watches_per_session=2)
    async with scene(limits) as s:
        watched = [(s.tree.root_id, await s.tree.tips())]
        other = await s.another_link()
        async with trio.open_nursery() as nursery:
            for link in (s.link, s.link, other):
                nursery.start_soon(partial(link.watch, watched, wait=30))
            await trio.testing.wait_all_tasks_blocked()
            assert s.watching.held == 3
            began = trio.current_time()
            with pytest.raises(RemoteError) as per_session:
                await s.link.watch(watched, wait=30)
            third = await s.another_link()
            with pytest.raises(RemoteError) as per_node:
                await third.watch(watched, wait=30)
            assert trio.current_time() == began
        assert per_session.value.code == "busy" and "this session" in str(per_session.value)
        assert per_node.value.code == "busy" and "the node" in str(per_node.value)
        assert s.watching.refused == 2 and s.watching.held == 0
        # Once the held ones are over, there is room again.
        assert (await s.link.watch(watched, wait=1)).trees == ()


async def test_a_held_watch_ends_at_once_when_the_server_begins_to_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        s.transport.stopping = stopping = trio.Event()
        async with trio.open_nursery() as nursery:
            answers = await watch_in_background(nursery, s, [(s.tree.root_id, await s.tree.tips())])
            await trio.sleep(2)
            began = trio.current_time()
            stopping.set()
        ((when, answer),) = answers
        assert when == began and answer.trees == ()


async def test_a_watch_whose_request_is_given_up_is_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        with trio.move_on_after(2):
            await s.link.watch([(s.tree.root_id, await s.tree.tips())], wait=600)
        assert s.watching.held == 0


async def test_a_tree_revoked_during_the_hold_is_not_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with scene() as s:
        await s.link.sync_tree(s.watcher, s.tree.root_id)
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            answers = await watch_in_background(
                nursery, s, [(s.tree.root_id, await s.tree.tips())], wait=10
            )
            await s.tree.revoke(s.watcher.public_key)  # itself a new tip of the tree
            await s.commit(s.tree, 1)
        ((when, answer),) = answers
        assert answer.trees == () and when - began == pytest.approx(10)
