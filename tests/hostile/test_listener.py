"""One client must not stop a node's listener: hang-ups, resets, and malformed,
truncated and deeply nested input, over WebSocket and HTTP, against a real
``eidetica serve``. After each attack a link an honest peer opened before it still
answers, and an honest node still syncs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from eidetica.protocol.codec import MSGPACK
from eidetica.protocol.messages import Ack, SendEntries
from eidetica.protocol.messages import Message as ProtocolMessage
from tests.hostile.attacks import (
    ATTACKER,
    DEEP_BODY,
    DEEP_BODY_JSON,
    DEEP_PLAIN,
    DEEP_PLAIN_JSON,
    NOT_UTF8,
    NOT_UTF8_JSON,
    UPGRADE,
    HttpReader,
    RawWebSocket,
    closed_by_peer,
    connect_from,
    frame_header,
    handshake,
    handshake_init,
    outcome,
    post,
    reset,
    websocket,
)
from tests.hostile.node import Node, check_honest, serving

ATTACK_SECONDS = 20

TRUNCATED = MSGPACK.encode(SendEntries(tree="0" * 64, entries=(b"x" * 40,)))[:-7]
TRUNCATED_JSON = b'{"v":1,"body":{"type":"send_entries","tree":"' + b"0" * 30

HOSTILE_MESSAGES = {
    "not-utf8": NOT_UTF8,
    "deep-body": DEEP_BODY,
    "deep-plain": DEEP_PLAIN,
    "truncated": TRUNCATED,
}
HOSTILE_BODIES = {
    "not-utf8": NOT_UTF8_JSON,
    "deep-body": DEEP_BODY_JSON,
    "deep-plain": DEEP_PLAIN_JSON,
    "truncated": TRUNCATED_JSON,
}


@asynccontextmanager
async def honest_link(node: Node) -> AsyncIterator[None]:
    """A WebSocket link the honest peer proves its key on before the block; after it,
    the same link must still answer a request under that session."""
    client = await websocket(node.port("ws"), "127.0.0.1")
    try:
        proven = await handshake(client, node.honest)
        yield
        with trio.fail_after(ATTACK_SECONDS):
            answer = await client.call(SendEntries(tree=node.tree, entries=()), proven)
        assert isinstance(answer, Ack), answer
    finally:
        await client.aclose()


async def test_clients_that_hang_up_after_the_upgrade_request_leave_the_listener_serving(
    tmp_path: Path,
) -> None:
    """Upgrade requests whose senders leave without reading the answer: with a
    goodbye (FIN) or a reset."""
    async with serving(tmp_path) as node, honest_link(node):
        with trio.fail_after(ATTACK_SECONDS):
            for index in range(20):
                stream = await connect_from(ATTACKER, node.port("ws"))
                await stream.send_all(UPGRADE)
                if index % 2:
                    reset(stream)
                else:
                    await stream.aclose()
            # One more that waits for the node to be done with it.
            stream = await connect_from(ATTACKER, node.port("ws"))
            await stream.send_all(UPGRADE)
            await stream.send_eof()
            await closed_by_peer(stream)
            await stream.aclose()
        await check_honest(node, process=True)


async def test_a_client_that_resets_after_sixteen_inits_leaves_the_listener_serving(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as node, honest_link(node):
        key = node.honest.generate()
        with trio.fail_after(ATTACK_SECONDS):
            for _ in range(3):
                client = await websocket(node.port("ws"))
                await client.send(*(MSGPACK.encode(handshake_init(key), i) for i in range(16)))
                client.reset()
        await check_honest(node, process=True)


async def test_hostile_websocket_messages_are_refused_and_the_listener_goes_on(
    tmp_path: Path,
) -> None:
    """Each kind of hostile message twice, on a connection of its own: each is
    answered ``malformed``."""
    answers: dict[str, list[str]] = {}
    async with serving(tmp_path) as node, honest_link(node):
        with trio.fail_after(ATTACK_SECONDS):
            for name, message in HOSTILE_MESSAGES.items():
                client = await websocket(node.port("ws"))
                await client.send(message, message)
                answers[name] = [outcome(await _answer(client)) for _ in range(2)]
                await client.aclose()
        await check_honest(node, process=True)
    for name, pair in answers.items():
        assert all(answer.startswith("error:malformed") for answer in pair), (name, pair)


async def _answer(client: RawWebSocket) -> ProtocolMessage | None:
    data = await client.receive()
    return None if data is None else MSGPACK.decode(data).body


async def test_hostile_http_bodies_are_answered_400_and_the_listener_goes_on(
    tmp_path: Path,
) -> None:
    """Each kind of hostile body twice, on one keep-alive connection of its own:
    each is answered 400."""
    statuses: dict[str, list[int | None]] = {}
    async with serving(tmp_path) as node, honest_link(node):
        with trio.fail_after(ATTACK_SECONDS):
            for name, body in HOSTILE_BODIES.items():
                stream = await connect_from(ATTACKER, node.port("http"))
                await stream.send_all(post(body) * 2)
                reader = HttpReader(stream)
                answers = [await reader.answer() for _ in range(2)]
                statuses[name] = [answer and answer[0] for answer in answers]
                await stream.aclose()
        await check_honest(node, ("http",), process=True)
    assert statuses == {name: [400, 400] for name in HOSTILE_BODIES}, statuses


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_messages_cut_short_leave_the_listener_serving(
    tmp_path: Path, transport: str
) -> None:
    """Messages (a frame, a body) that declare 1,000 bytes, send 10 and hang up, with
    a goodbye (FIN) or a reset."""
    async with serving(tmp_path) as node, honest_link(node):
        with trio.fail_after(ATTACK_SECONDS):
            for index in range(4):
                if transport == "ws":
                    client = await websocket(node.port("ws"))
                    stream = client.stream
                    await stream.send_all(frame_header(1000) + b"\x91" * 10)
                else:
                    stream = await connect_from(ATTACKER, node.port("http"))
                    await stream.send_all(post(b"[" * 10, length=1000))
                if index % 2:
                    reset(stream)
                else:
                    await stream.send_eof()
                    await closed_by_peer(stream)
                    await stream.aclose()
        await check_honest(node, (transport,), process=True)
