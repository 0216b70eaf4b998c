"""The sim transport: bytes really reach the served handler, and every fault control
behaves deterministically in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from eidetica.actors.transports import sim
from eidetica.actors.transports.base import Origin, Transport
from eidetica.actors.transports.sim import DEFAULT_NETWORK, SimNetwork, SimTransport
from eidetica.errors import TransportError, Unreachable


async def echo(data: bytes, origin: Origin) -> bytes:
    """Answers with the request reversed, so an answer is visibly the handler's work."""
    return data[::-1]


def test_sim_transport_is_a_transport() -> None:
    transport: Transport = SimTransport(SimNetwork())
    assert transport.scheme == "sim"


async def test_request_round_trips_through_the_served_handler() -> None:
    network = SimNetwork()
    seen: list[bytes] = []

    async def handler(data: bytes, origin: Origin) -> bytes:
        seen.append(data)
        return data + b"!"

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(SimTransport(network).serve, "sim://alice", handler)
            assert address == "sim://alice"
            answer = await SimTransport(network).request(address, b"hello")
            nursery.cancel_scope.cancel()
    assert answer == b"hello!"
    assert seen == [b"hello"]
    assert network.delivered == 1


async def test_empty_name_binds_a_fresh_unique_name() -> None:
    network = SimNetwork()
    transport = SimTransport(network)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(transport.serve, "sim://", echo)
            second = await nursery.start(transport.serve, "sim://", echo)
            assert first.startswith("sim://") and len(first) > len("sim://")
            assert second.startswith("sim://") and first != second
            assert await transport.request(first, b"ab") == b"ba"
            assert await transport.request(second, b"cd") == b"dc"
            nursery.cancel_scope.cancel()


async def test_serving_a_served_name_raises() -> None:
    network = SimNetwork()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(SimTransport(network).serve, "sim://alice", echo)
            with pytest.raises(TransportError, match="already served"):
                await nursery.start(SimTransport(network).serve, "sim://alice", echo)
            nursery.cancel_scope.cancel()


async def test_unknown_address_is_unreachable() -> None:
    transport = SimTransport(SimNetwork())
    with trio.fail_after(5), pytest.raises(Unreachable):
        await transport.request("sim://nobody", b"x")


async def test_other_schemes_are_refused() -> None:
    transport = SimTransport(SimNetwork())
    with trio.fail_after(5), pytest.raises(TransportError, match="not a sim address"):
        await transport.request("http://127.0.0.1:1", b"x")


async def test_partition_cuts_both_ways_until_healed() -> None:
    network = SimNetwork()
    alice = SimTransport(network, name="alice")
    bob = SimTransport(network, name="bob")
    carol = SimTransport(network, name="carol")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(alice.serve, "sim://alice", echo)
            await nursery.start(bob.serve, "sim://bob", echo)
            network.partition("alice", "bob")
            with pytest.raises(Unreachable):
                await alice.request("sim://bob", b"x")
            with pytest.raises(Unreachable):
                await bob.request("sim://alice", b"x")
            assert await carol.request("sim://bob", b"ok") == b"ko"
            network.heal("bob", "alice")
            assert await alice.request("sim://bob", b"hi") == b"ih"
            network.partition("alice", "bob")
            network.heal_all()
            assert await bob.request("sim://alice", b"hi") == b"ih"
            nursery.cancel_scope.cancel()


async def test_drop_next_loses_exactly_that_many_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(timeout=3.0)
    transport = SimTransport(network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", echo)
            network.drop_next(2)
            for _ in range(2):
                start = trio.current_time()
                with pytest.raises(TransportError, match="lost"):
                    await transport.request(address, b"x")
                assert trio.current_time() - start == 3.0
            assert await transport.request(address, b"xy") == b"yx"
            nursery.cancel_scope.cancel()
    assert network.dropped == 2
    assert network.delivered == 1


async def test_drop_probability_loses_some_and_counts_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(seed=7, timeout=1.0)
    transport = SimTransport(network)
    network.drop(0.5)
    answered = lost = 0
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", echo)
            for _ in range(100):
                try:
                    await transport.request(address, b"x")
                except TransportError:
                    lost += 1
                else:
                    answered += 1
            nursery.cancel_scope.cancel()
    assert 0 < lost < 100
    assert network.dropped == lost
    assert network.delivered == answered
    assert lost + answered == 100


async def test_delay_takes_exactly_that_long_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    transport = SimTransport(network)
    network.delay(2.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", echo)
            start = trio.current_time()
            assert await transport.request(address, b"ab") == b"ba"
            assert trio.current_time() - start == 2.5
            nursery.cancel_scope.cancel()


async def test_jitter_reorders_concurrent_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(seed=1)
    transport = SimTransport(network)
    network.delay(1.0, jitter=1.0)
    sent: list[int] = []
    finished: list[int] = []

    async def send(index: int) -> None:
        sent.append(index)
        answer = await transport.request(address, bytes([index]))
        assert answer == bytes([index])
        finished.append(index)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", echo)
            async with trio.open_nursery() as senders:
                for index in range(8):
                    senders.start_soon(send, index)
            nursery.cancel_scope.cancel()
    assert sorted(finished) == sorted(sent)
    assert finished != sent


async def test_request_slower_than_timeout_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(timeout=5.0)
    transport = SimTransport(network)

    async def stuck(data: bytes, origin: Origin) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", stuck)
            start = trio.current_time()
            with pytest.raises(TransportError, match="timed out"):
                await transport.request(address, b"x")
            assert trio.current_time() - start == 5.0
            nursery.cancel_scope.cancel()


async def test_duplicate_invokes_the_handler_twice_with_the_same_bytes() -> None:
    network = SimNetwork()
    transport = SimTransport(network)
    network.duplicate(1.0)
    seen: list[bytes] = []
    both = trio.Event()

    async def handler(data: bytes, origin: Origin) -> bytes:
        seen.append(data)
        if len(seen) == 2:
            both.set()
        return b"answer %d" % len(seen)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", handler)
            answer = await transport.request(address, b"once")
            await both.wait()
            nursery.cancel_scope.cancel()
    assert seen == [b"once", b"once"]
    assert answer == b"answer 1"
    assert network.delivered == 1
    assert network.duplicated == 1


async def test_failing_handler_gives_transport_error_and_keeps_serving() -> None:
    network = SimNetwork()
    transport = SimTransport(network)

    async def fragile(data: bytes, origin: Origin) -> bytes:
        if data == b"boom":
            raise ValueError("cannot handle boom")
        return data

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", fragile)
            with pytest.raises(TransportError, match="cannot handle boom"):
                await transport.request(address, b"boom")
            assert await transport.request(address, b"fine") == b"fine"
            nursery.cancel_scope.cancel()


async def test_handler_answering_non_bytes_is_a_transport_error() -> None:
    network = SimNetwork()
    transport = SimTransport(network)

    async def sloppy(data: bytes, origin: Origin) -> bytes:
        return {"not": "bytes"}  # type: ignore[return-value]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, "sim://", sloppy)
            with pytest.raises(TransportError, match="not bytes"):
                await transport.request(address, b"x")
            nursery.cancel_scope.cancel()


async def test_cancelling_serve_frees_the_name() -> None:
    network = SimNetwork()
    transport = SimTransport(network)
    with trio.fail_after(5):
        async with trio.open_nursery() as serving:
            await serving.start(transport.serve, "sim://alice", echo)
            assert await transport.request("sim://alice", b"ab") == b"ba"
            serving.cancel_scope.cancel()
        with pytest.raises(Unreachable):
            await transport.request("sim://alice", b"x")
        async with trio.open_nursery() as serving_again:
            address = await serving_again.start(transport.serve, "sim://alice", echo)
            assert address == "sim://alice"
            assert await transport.request(address, b"cd") == b"dc"
            serving_again.cancel_scope.cancel()


async def test_stopping_the_server_fails_requests_in_flight() -> None:
    network = SimNetwork()
    transport = SimTransport(network)
    entered = trio.Event()
    handler_cancelled = False

    async def slow(data: bytes, origin: Origin) -> bytes:
        nonlocal handler_cancelled
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            handler_cancelled = True
        raise AssertionError("unreachable")

    server_scope = trio.CancelScope()

    async def serve_slow(*, task_status: trio.TaskStatus[str]) -> None:
        with server_scope:
            await transport.serve("sim://slow", slow, task_status=task_status)

    async def stop_when_entered() -> None:
        await entered.wait()
        server_scope.cancel()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_slow)
            nursery.start_soon(stop_when_entered)
            with pytest.raises(Unreachable, match="stopped serving"):
                await transport.request("sim://slow", b"x")
    assert handler_cancelled


async def test_default_network_is_used_without_one() -> None:
    server = SimTransport()
    client = SimTransport()
    assert server.network is DEFAULT_NETWORK is sim.DEFAULT_NETWORK
    assert client.name != server.name
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, "sim://", echo)
            assert await client.request(address, b"abc") == b"cba"
            with pytest.raises(Unreachable):
                await SimTransport(SimNetwork()).request(address, b"abc")
            nursery.cancel_scope.cancel()
