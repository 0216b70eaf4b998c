"""A node that speaks version 1 of the protocol is answered ``unknown-version``, over
each transport, by a real node on 127.0.0.1: its sessions were bearer tokens, and
there is no falling back to them."""

from __future__ import annotations

import os
import time

import httpx
import msgspec
import pytest
import trio
import trio_websocket

import eidetica
from eidetica.actors.sync import open_sync
from eidetica.protocol.codec import JSON, MSGPACK
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.messages import ErrorReply


def version_1_init() -> dict[str, object]:
    """An Init as a version-1 node sends it: no ephemeral key, ``v`` 1, an id."""
    body = {
        "type": "handshake_init",
        "public_key": SigningKey.generate().public_key,
        "challenge": os.urandom(32),
        "time": int(time.time()),
    }
    return {"v": 1, "body": body, "id": 5}


def assert_unknown_version(answer: object) -> None:
    assert isinstance(answer, ErrorReply), answer
    assert answer.code == "unknown-version"
    assert answer.message == "protocol version 1 is not 3"


@pytest.mark.parametrize("scheme", ["http", "ws"])
async def test_a_version_1_handshake_is_answered_unknown_version(scheme: str) -> None:
    with trio.fail_after(20):
        async with eidetica.open_instance(None) as node, open_sync(node) as sync:
            at = await sync.start_server(f"{scheme}://127.0.0.1:0")
            if scheme == "http":
                async with httpx.AsyncClient() as client:
                    response = await client.post(
                        f"{at}/api/v0",
                        content=msgspec.json.encode(version_1_init()),
                        headers={"content-type": "application/json"},
                    )
                assert response.status_code == 400
                assert_unknown_version(JSON.decode(response.content).body)
            else:
                async with trio_websocket.open_websocket_url(at) as socket:
                    await socket.send_message(msgspec.msgpack.encode(version_1_init()))
                    answer = await socket.get_message()
                assert isinstance(answer, bytes)
                envelope = MSGPACK.decode(answer)
                assert envelope.id == 5
                assert_unknown_version(envelope.body)
