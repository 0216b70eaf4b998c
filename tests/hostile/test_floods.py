"""Floods against a real ``eidetica serve``: handshake inits, throwaway-key sessions,
tiny requests and orphan entries. None of them may lock an honest peer out, take its
session, or push its waiting entries out of the node."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.transports.http import HttpTransport
from eidetica.actors.transports.ws import WebSocketTransport
from eidetica.errors import EideticaError
from eidetica.protocol.codec import JSON, MSGPACK
from eidetica.protocol.entry import create_entry
from eidetica.protocol.handshake import Initiator
from eidetica.protocol.intake import MAX_HELD
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import MAX_ENTRIES_PER_BATCH
from eidetica.protocol.messages import (
    ANSWERS,
    Ack,
    HandshakeDone,
    HandshakeReply,
    Message,
    SendEntries,
)
from tests.hostile.attacks import (
    ATTACKER,
    RawWebSocket,
    Refused,
    connect_from,
    handshake,
    handshake_init,
    http_pipeline,
    pipeline,
    post,
    source,
    websocket,
)
from tests.hostile.node import Node, check_honest, serving, tips, write_key

FLOOD_SECONDS = 60

INITS = 4096
"""As many Inits as the node's table of pending handshakes holds (and as filled the
table of spent challenges the node used to keep)."""

THROWAWAY_SESSIONS = 4200
"""More complete handshakes than the node keeps sessions for."""

PER_SOURCE = 20
"""Handshakes each throwaway source makes: within a burst of the default rate."""


HTTP_REQUESTS_PER_CONNECTION = 1000
"""hypercorn closes a keep-alive connection after this many requests."""


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_a_flood_of_inits_from_one_connection_leaves_honest_handshakes_answered(
    tmp_path: Path, transport: str
) -> None:
    key = SigningKey.generate()
    async with serving(tmp_path) as node:
        with trio.fail_after(FLOOD_SECONDS):
            if transport == "ws":
                client = await websocket(node.port("ws"))
                inits = (MSGPACK.encode(handshake_init(key), i) for i in range(INITS))
                seen = await pipeline(client, inits, INITS)
                await client.aclose()
            else:
                seen = Counter[str]()
                for start in range(0, INITS, HTTP_REQUESTS_PER_CONNECTION):
                    count = min(HTTP_REQUESTS_PER_CONNECTION, INITS - start)
                    stream = await connect_from(ATTACKER, node.port("http"))
                    posts = [post(JSON.encode(handshake_init(key))) for _ in range(count)]
                    seen += await http_pipeline(stream, posts)
                    await stream.aclose()
        print(f"answers to {INITS} inits over {transport}: {dict(seen)}")
        # At once, and from another address, an honest peer is answered, not "busy".
        await check_honest(node, (transport,))


async def _answers(client: RawWebSocket, count: int) -> dict[int, Message]:
    """The next ``count`` answers on ``client`` (or fewer, if it closes), by id."""
    found: dict[int, Message] = {}
    while len(found) < count:
        data = await client.receive()
        if data is None:
            break
        envelope = MSGPACK.decode(data)
        # Skip the node's own requests (it handshakes back over the link).
        if envelope.id is not None and envelope.body.__struct_config__.tag in ANSWERS:
            found[envelope.id] = envelope.body
    return found


async def _throwaway_handshakes(port: int, origin: str, count: int) -> int:
    """``count`` complete handshakes, each with a key of its own, from ``origin`` on
    one connection, pipelined; how many the node completed."""
    try:
        client = await websocket(port, origin)
    except Refused:
        return 0
    try:
        initiators = [Initiator(SigningKey.generate(), now=time.time()) for _ in range(count)]
        await client.send(*(MSGPACK.encode(i.start(), n) for n, i in enumerate(initiators)))
        replies = await _answers(client, count)
        finishes = [
            MSGPACK.encode(initiators[n].receive_reply(reply), count + n)
            for n, reply in replies.items()
            if isinstance(reply, HandshakeReply)
        ]
        if not finishes:
            return 0
        await client.send(*finishes)
        dones = await _answers(client, len(finishes))
        return sum(isinstance(done, HandshakeDone) for done in dones.values())
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return 0
    finally:
        await client.aclose()


async def test_throwaway_key_handshakes_do_not_evict_a_live_session(tmp_path: Path) -> None:
    """An honest peer proves its key; then 4,200 throwaway keys, from 210 addresses,
    each complete a handshake; the honest session still names the honest key."""
    async with serving(tmp_path) as node:
        honest = await websocket(node.port("ws"), "127.0.0.1")
        try:
            proven = await handshake(honest, node.honest)
            completed = 0
            sources = THROWAWAY_SESSIONS // PER_SOURCE
            limiter = trio.CapacityLimiter(16)

            async def one_source(index: int) -> None:
                nonlocal completed
                async with limiter:
                    done = await _throwaway_handshakes(node.port("ws"), source(index), PER_SOURCE)
                completed += done

            with trio.fail_after(FLOOD_SECONDS):
                async with trio.open_nursery() as nursery:
                    for index in range(sources):
                        nursery.start_soon(one_source, index)
                print(f"{completed} of {THROWAWAY_SESSIONS} throwaway handshakes completed")
                answer = await honest.call(SendEntries(tree=node.tree, entries=()), proven)
            assert isinstance(answer, Ack), answer
        finally:
            await honest.aclose()
        await check_honest(node)


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_a_flood_of_tiny_requests_leaves_the_node_serving(
    tmp_path: Path, transport: str
) -> None:
    async with serving(tmp_path) as node:
        with trio.fail_after(FLOOD_SECONDS):
            if transport == "ws":
                client = await websocket(node.port("ws"))
                seen = await pipeline(client, (b"\xc0" for _ in range(2000)), 2000)
                await client.aclose()
            else:
                stream = await connect_from(ATTACKER, node.port("http"))
                seen = await http_pipeline(stream, [post(b"{}") for _ in range(500)])
                await stream.aclose()
        print(f"answers to tiny requests over {transport}: {dict(seen)}")
        # Each is refused (or the connection is cut): none is a success.
        assert all(kind == "closed" or kind.startswith(("error:", "4", "5")) for kind in seen)
        await check_honest(node, (transport,))


@asynccontextmanager
async def _linked(
    node: Node, transport_name: str, key: SigningKey
) -> AsyncIterator[tuple[eidetica.Instance, Link]]:
    """An in-process node with ``key`` that has proven it to ``node`` over a transport
    of its own."""
    directory = node.data.parent / f"peer-{os.urandom(4).hex()}"
    write_key(directory, key)
    transport = WebSocketTransport() if transport_name == "ws" else HttpTransport()
    codec = MSGPACK if transport_name == "ws" else JSON
    async with eidetica.open_instance(directory) as inst, transport:
        link = Link(transport, node.address(transport_name), codec)
        await link.handshake(inst)
        yield inst, link


def _orphans(key: SigningKey, tree: str, count: int) -> list[bytes]:
    """``count`` valid entries of ``tree`` by ``key``, each on a parent nobody has."""
    return [
        create_entry(key, tree=tree, parents=[os.urandom(32).hex()], height=1, stores=()).raw
        for _ in range(count)
    ]


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_orphans_from_a_stranger_do_not_push_out_a_peer_s_waiting_entry(
    tmp_path: Path, transport: str
) -> None:
    """A tree anyone may read (and so push to): a stranger sends more orphans than the
    node's holding area holds, between an honest writer's child entry and its parent.
    The child still waits, and is stored once its parent comes."""
    async with serving(tmp_path, anyone="read") as node:
        with trio.fail_after(FLOOD_SECONDS):
            async with _linked(node, transport, node.honest) as (writer, link):
                await link.sync_tree(writer, node.tree)
                tree = await writer.open_tree(node.tree)
                async with tree.transaction() as op:
                    op.doc("todo").set("eggs", True)
                (parent,) = await tree.tips()
                async with tree.transaction() as op:
                    op.doc("todo").set("bread", 2)
                (child,) = await tree.tips()
                raw_child = (await tree.entry(child)).raw
                raw_parent = (await tree.entry(parent)).raw
                ack = await link.call(SendEntries(tree=node.tree, entries=(raw_child,)), Ack)
                assert (ack.stored, ack.held) == (0, 1), ack

                stranger_key = SigningKey.generate()
                orphans = _orphans(stranger_key, node.tree, MAX_HELD + 500)
                answers = Counter[str]()
                async with _linked(node, transport, stranger_key) as (_, stranger):
                    for start in range(0, len(orphans), MAX_ENTRIES_PER_BATCH):
                        batch = tuple(orphans[start : start + MAX_ENTRIES_PER_BATCH])
                        try:
                            answer = await stranger.call(SendEntries(node.tree, batch), Ack)
                            answers[f"held {answer.held} rejected {answer.rejected}"] += 1
                        except EideticaError as exc:  # refusing them is as good
                            answers[str(exc)[:60]] += 1
                print(f"answers to {len(orphans)} orphans over {transport}: {dict(answers)}")

                ack = await link.call(SendEntries(tree=node.tree, entries=(raw_parent,)), Ack)
                assert await tips(node) == [child], ack
        node.tips = [child]
        node.entries |= {parent, child}
        node.document = {"milk": {"done": False}, "eggs": True, "bread": 2}
        await check_honest(node, (transport,))
