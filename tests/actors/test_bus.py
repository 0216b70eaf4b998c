"""The event bus: fan-out that never waits, and subscriptions that mark their gaps."""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from eidetica.actors.bus import Bus, Subscription
from eidetica.events import Event, Missed, PeerRemoved


def removed(n: int) -> PeerRemoved:
    return PeerRemoved(f"ed25519:{n}")


def drain(bus_events: list[Event]) -> list[int | str]:
    """Event numbers in order, a gap as ``"missed:N"``."""
    seen: list[int | str] = []
    for event in bus_events:
        assert isinstance(event, Missed | PeerRemoved)
        if isinstance(event, Missed):
            seen.append(f"missed:{event.count}")
        else:
            seen.append(int(event.peer.split(":")[1]))
    return seen


async def read_held(subscription: Subscription, count: int) -> list[Event]:
    return [await subscription.__anext__() for _ in range(count)]


async def test_a_full_subscription_keeps_what_it_holds_and_marks_the_gap_once() -> None:
    bus = Bus()
    events = bus.subscribe(buffer=2)
    for n in range(5):
        bus.publish(removed(n))
    assert drain(await read_held(events, 3)) == [0, 1, "missed:3"]
    bus.publish(removed(5))
    assert drain(await read_held(events, 1)) == [5]


@given(
    st.lists(st.one_of(st.just("publish"), st.just("read")), max_size=60),
    st.integers(min_value=1, max_value=5),
)
def test_what_is_read_is_what_happened_in_order_with_every_loss_counted(
    steps: list[str], buffer: int
) -> None:
    async def run() -> None:
        bus = Bus()
        events = bus.subscribe(buffer)
        published, read = 0, []
        for step in steps:
            if step == "publish":
                bus.publish(removed(published))
                published += 1
                assert len(events._queue) <= buffer + 1  # bounded, whatever the reader does
            elif events._queue:
                read.append(await events.__anext__())
        bus.close()
        read += [event async for event in events]
        seen = drain(read)
        numbers = [n for n in seen if isinstance(n, int)]
        assert numbers == sorted(numbers)  # order kept
        lost = sum(int(str(n).split(":")[1]) for n in seen if isinstance(n, str))
        assert len(numbers) + lost == published  # nothing vanishes uncounted
        assert all(  # no two gaps in a row: one mark counts a whole gap
            not (isinstance(a, str) and isinstance(b, str)) for a, b in itertools.pairwise(seen)
        )

    trio.run(run)


async def test_a_listener_that_raises_is_removed_and_the_rest_still_hear() -> None:
    bus = Bus()
    heard: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("bug")

    bus.listen(broken)
    bus.listen(heard.append)
    bus.publish(removed(1))
    bus.publish(removed(2))
    assert heard == [removed(1), removed(2)]


async def test_closing_the_bus_ends_every_subscription_after_what_it_holds() -> None:
    bus = Bus()
    events = bus.subscribe()
    bus.publish(removed(1))
    bus.close()
    assert [event async for event in events] == [removed(1)]
    assert [event async for event in bus.subscribe()] == []


async def test_a_subscription_left_with_async_with_hears_no_more() -> None:
    bus = Bus()
    async with bus.subscribe() as events:
        bus.publish(removed(1))
        assert await events.__anext__() == removed(1)
    bus.publish(removed(2))
    assert [event async for event in events] == []


def test_a_subscription_must_hold_at_least_one_event() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Bus().subscribe(0)


async def test_a_subscription_its_reader_dropped_is_let_go() -> None:
    bus = Bus()
    for _ in range(100):
        events = bus.subscribe()
        bus.publish(removed(0))
        async for _event in events:  # left with break, never closed
            break
        del events
    assert len(bus._subscriptions) == 0
    kept = bus.subscribe()
    bus.publish(removed(1))
    assert len(bus._subscriptions) == 1 and await kept.__anext__() == removed(1)
