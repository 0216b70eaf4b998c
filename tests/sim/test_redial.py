"""Redialling a peer whose two-way link closed: backoff, jitter, and catching up.

The links are the sim transport's own; the test cuts them with the network's
controls. Time is trio's mock clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio
import trio.testing

import eidetica
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.base import TwoWay
from eidetica.actors.transports.sim import SimNetwork, SimTransport
from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.messages import HandshakeFinish, HandshakeInit
from tests.waiting import stored


class DialCountingSim(SimTransport):
    """A sim transport that says when each handshake it sent was tried (:attr:`dials`),
    and can have the link of the next one cut as soon as it is answered."""

    def __init__(self, network: SimNetwork, name: str) -> None:
        super().__init__(network, name)
        self._dialled, self.dials = trio.open_memory_channel[float](math.inf)
        self.cut_after_handshake = False
        """Cut the link (then reset) when the next handshake is answered."""

    async def request(self, address: str, data: bytes) -> bytes:
        body = MSGPACK.decode(data).body
        if isinstance(body, HandshakeInit):
            self._dialled.send_nowait(trio.current_time())
        answer = await super().request(address, data)
        if isinstance(body, HandshakeFinish) and self.cut_after_handshake:
            self.cut_after_handshake = False
            self.network.disconnect(self.name, address)  # before the dialler takes it up
        return answer


class Pair(NamedTuple):
    server: eidetica.Instance
    client: eidetica.Instance
    client_sync: Sync
    transport: DialCountingSim
    network: SimNetwork
    at: str
    """The server's address, which the client has dialled (that dial already drained
    from ``transport.dials``)."""


@asynccontextmanager
async def linked(network: SimNetwork, redial_max: float) -> AsyncIterator[Pair]:
    """A server, and a client on a :class:`DialCountingSim` that has dialled it;
    timers that never fire, and redials from 1 s up to ``redial_max``."""
    config = SyncConfig(
        periodic_sync=10**6, connection_check=10**6, redial_min=1, redial_max=redial_max
    )
    transport = DialCountingSim(network, "client")
    async with (
        eidetica.open_instance(None) as server,
        eidetica.open_instance(None) as client,
        transport,
        open_sync(server, network=network, name="server", config=config) as server_sync,
        open_sync(client, transports={"sim": transport}, config=config) as client_sync,
    ):
        at = await server_sync.start_server("sim://server")
        await client_sync.connect(at)
        transport.dials.receive_nowait()  # connect's own
        yield Pair(server, client, client_sync, transport, network, at)


async def test_a_lost_link_is_redialled_with_doubling_jittered_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork()
    with trio.fail_after(1000):
        async with linked(network, redial_max=8) as pair:
            client, client_transport = pair.client, pair.transport
            assert isinstance(client_transport, TwoWay)
            tree = await pair.server.create_tree(name="notes")
            await tree.grant(client.public_key, "read")
            await pair.client_sync.add_tree_sync(pair.server.public_key, tree.root_id)
            await pair.client_sync.sync_with_peer(pair.server.public_key)

            network.partition("client", "server")  # which closes the link
            lost = trio.current_time()
            async with tree.transaction() as op:
                op.doc("todo").set("while_away", 1)
            missed = (await tree.tips())[0]
            times = [lost]
            async for dialled in client_transport.dials:
                times.append(dialled)
                if len(times) == 6:  # five redials failed: let the sixth through
                    network.heal("client", "server")
                if len(times) == 7:
                    break
            await stored(client, missed)  # the redial that worked caught the client up
            waits = [after - before for before, after in itertools.pairwise(times)]
            for wait, base in zip(waits, [1, 2, 4, 8, 8, 8], strict=True):
                assert base <= wait <= base * 1.1, waits
            with trio.move_on_after(300):
                await client_transport.dials.receive()
                raise AssertionError("redialled a peer that is linked again")


async def test_a_link_that_keeps_dropping_at_once_is_redialled_ever_more_slowly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        async with linked(SimNetwork(), redial_max=60) as pair:
            client_transport = pair.transport
            waits = []
            for lives in [0, 0, 0, 0, 120, 0]:  # how long each new link lasts
                await trio.sleep(lives)
                dropped = trio.current_time()
                assert pair.network.disconnect("client", "server") == 1
                waits.append(await client_transport.dials.receive() - dropped)
                await trio.testing.wait_all_tasks_blocked()  # the new link is up
            # Each link that died at once doubled the wait; one that lived reset it.
            for wait, base in zip(waits, [1, 2, 4, 8, 1, 2], strict=True):
                assert base <= wait <= base * 1.1, waits


async def test_a_link_that_closes_before_it_is_taken_up_is_redialled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        async with linked(SimNetwork(), redial_max=8) as pair:
            client_transport, at = pair.transport, pair.at
            # The first redial's link closes the moment its handshake is answered.
            client_transport.cut_after_handshake = True
            pair.network.disconnect("client", "server")
            await client_transport.dials.receive()
            # Not left on the closed link: redialled, with the backoff going on.
            dialled_again = await client_transport.dials.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert client_transport.is_open(at)
            peers = (await pair.client_sync.status()).peers
            assert peers[pair.server.public_key].address == at
            assert dialled_again < 60  # not at a connection check (10**6 s)
