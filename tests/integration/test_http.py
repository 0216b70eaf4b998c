"""The HTTP transport over real sockets on 127.0.0.1: hypercorn serves, httpx sends,
status codes say what went wrong, and bad input never stops the server."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

import eidetica
from eidetica.actors.link import Link
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.base import Handler, Origin, Transport
from eidetica.actors.transports.http import HttpTransport
from eidetica.errors import RemoteError, TransportError, Unreachable
from eidetica.protocol import limits
from eidetica.protocol.codec import JSON
from eidetica.protocol.messages import ErrorReply, SendEntries

ANY_PORT = "http://127.0.0.1:0"
JSON_TYPE = {"content-type": "application/json"}


async def echo(data: bytes, origin: Origin) -> bytes:
    """Answers with the request's own envelope, so an answer shows what arrived."""
    return data


def note(text: str) -> bytes:
    """A JSON envelope whose body carries ``text`` (an error reply, as it happens)."""
    return JSON.encode(ErrorReply(code="internal", message=text))


def error_code(answer: bytes) -> str:
    body = JSON.decode(answer).body
    assert isinstance(body, ErrorReply)
    return body.code


@asynccontextmanager
async def serving(
    handler: Handler, address: str = ANY_PORT, *, compress: bool = True
) -> AsyncIterator[str]:
    """Serve ``handler`` for the block; yield the bound address; stop serving after."""
    async with trio.open_nursery() as nursery:
        yield await nursery.start(HttpTransport(compress=compress).serve, address, handler)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def node(path: Path) -> AsyncIterator[tuple[eidetica.Instance, Sync]]:
    """A node on SQLite files under ``path`` with its sync engine running."""
    async with eidetica.open_instance(path) as inst, open_sync(inst) as sync:
        yield inst, sync


def free_port() -> int:
    """A port nobody listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def raw_post(address: str, head: bytes, body: bytes = b"", chunked: bool = False) -> bytes:
    """POST /api/v0 over a bare socket: the request head, then ``body`` (or, with
    ``chunked``, 1 MiB chunks without end), written while the answer is read, as long
    as the server takes them. Returns all the server sent until it closed the
    connection."""
    host, port = address.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    received = bytearray()
    async with stream:
        await stream.send_all(b"POST /api/v0 HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")

        async def send_body() -> None:
            chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
            try:
                await stream.send_all(body)
                while chunked:
                    await stream.send_all(chunk)
            except trio.BrokenResourceError:
                pass  # the server closed the connection on what it refused

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            try:
                while data := await stream.receive_some():
                    received += data
            except trio.BrokenResourceError:
                pass  # reset after the answer, for the body the server did not read
            nursery.cancel_scope.cancel()
    return bytes(received)


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_http_transport_is_a_transport() -> None:
    transport: Transport = HttpTransport()
    assert transport.scheme == "http"


async def test_serve_reports_the_bound_port_and_answers() -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client, serving(echo) as address:
            host, port = address.removeprefix("http://").split(":")
            assert host == "127.0.0.1" and int(port) > 0
            assert await client.request(address, note("hi")) == note("hi")


async def test_health_answers_200_with_a_small_json_body() -> None:
    with trio.fail_after(10):
        async with serving(echo) as address, httpx.AsyncClient() as client:
            response = await client.get(f"{address}/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def test_health_answers_503_once_the_storage_is_closed(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with (
            eidetica.open_instance(tmp_path / "a") as a,
            open_sync(a) as a_sync,
            httpx.AsyncClient() as client,
        ):
            health = f"{await a_sync.start_server(ANY_PORT)}/health"
            assert (await client.get(health)).status_code == 200
            a.backend.close()  # as if the disk went away under the node
            response = await client.get(health)
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert response.json()["storage"] is False
            ready = await client.get(health.replace("/health", "/ready"))
            assert ready.status_code == 503
            assert ready.json()["status"] == "not-ready"


async def test_error_answers_get_the_status_of_their_code() -> None:
    codes = {
        "malformed": 400,
        "unknown-version": 400,
        "unknown-message": 400,
        "unauthenticated": 401,
        "forbidden": 403,
        "not-found": 404,
        "too-large": 413,
        "rejected": 422,
        "internal": 500,
    }

    async def refuse(data: bytes, origin: Origin) -> bytes:
        return JSON.encode(ErrorReply(code=data.decode(), message="no"))

    with trio.fail_after(10):
        async with serving(refuse) as address, httpx.AsyncClient() as client:
            for code, status in codes.items():
                response = await client.post(f"{address}/api/v0", content=code, headers=JSON_TYPE)
                assert (code, response.status_code) == (code, status)
                assert error_code(response.content) == code


async def test_the_client_hands_back_error_answers_for_the_caller_to_decode() -> None:
    async def forbid(data: bytes, origin: Origin) -> bytes:
        return JSON.encode(ErrorReply(code="forbidden", message="not you"))

    with trio.fail_after(10):
        async with HttpTransport() as client, serving(forbid) as address:
            answer = await client.request(address, note("may I?"))
    assert error_code(answer) == "forbidden"


async def test_a_failing_handler_is_answered_500_with_an_internal_error() -> None:
    async def broken(data: bytes, origin: Origin) -> bytes:
        raise RuntimeError("bug")

    with trio.fail_after(10):
        async with HttpTransport() as client, serving(broken) as address:
            answer = await client.request(address, note("x"))
            assert error_code(answer) == "internal"
            async with httpx.AsyncClient() as raw:
                response = await raw.post(f"{address}/api/v0", content=b"{}", headers=JSON_TYPE)
    assert response.status_code == 500


async def test_a_declared_oversized_body_is_refused_before_it_is_sent() -> None:
    with trio.fail_after(10):
        async with serving(echo) as address:
            # Only the head goes out: the 413 cannot wait for a body, and the server
            # closes the connection rather than read what it refused.
            head = b"content-type: application/json\r\ncontent-length: %d\r\n" % (
                limits.MAX_MESSAGE_BYTES + 1
            )
            status, body = status_and_body(await raw_post(address, head))
    assert status == 413
    assert error_code(body) == "too-large"


async def test_a_chunked_body_is_cut_off_once_it_goes_over_the_limit() -> None:
    with trio.fail_after(20):
        async with serving(echo) as address:
            head = b"content-type: application/json\r\ntransfer-encoding: chunked\r\n"
            status, body = status_and_body(await raw_post(address, head, chunked=True))
    assert status == 413
    assert error_code(body) == "too-large"


async def test_a_request_over_the_limit_is_refused_before_sending() -> None:
    seen: list[bytes] = []

    async def handler(data: bytes, origin: Origin) -> bytes:
        seen.append(data)
        return data

    with trio.fail_after(10):
        async with HttpTransport() as client, serving(handler) as address:
            with pytest.raises(TransportError, match="over"):
                await client.request(address, b"x" * (limits.MAX_MESSAGE_BYTES + 1))
    assert seen == []


async def test_an_answer_over_the_limit_becomes_a_too_large_error_answer() -> None:
    async def verbose(data: bytes, origin: Origin) -> bytes:
        return b" " * (limits.MAX_MESSAGE_BYTES + 1)

    with trio.fail_after(10):
        async with HttpTransport() as client, serving(verbose) as address:
            answer = JSON.decode(await client.request(address, note("tell me everything")))
    assert isinstance(answer.body, ErrorReply) and answer.body.code == "too-large"


async def test_nobody_listening_is_unreachable() -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client:
            with pytest.raises(Unreachable):
                await client.request(f"http://127.0.0.1:{free_port()}", note("anyone?"))


async def test_an_error_status_without_an_envelope_is_a_transport_error() -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client, serving(echo) as address:
            # POST /elsewhere/api/v0: the framework's own 404 page, not an answer.
            with pytest.raises(TransportError, match="404"):
                await client.request(f"{address}/elsewhere", note("x"))


@pytest.mark.parametrize(
    "address", ["ws://127.0.0.1:1", "http://", "http://127.0.0.1:notaport", "http://h:1/?q=1"]
)
async def test_bad_addresses_are_refused(address: str) -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client:
            with pytest.raises(TransportError):
                await client.request(address, note("x"))
            async with trio.open_nursery() as nursery:
                with pytest.raises(TransportError):
                    await nursery.start(client.serve, address, echo)


async def test_serving_a_taken_port_raises() -> None:
    with trio.fail_after(10):
        async with serving(echo) as address, trio.open_nursery() as nursery:
            with pytest.raises(TransportError, match="cannot listen"):
                await nursery.start(HttpTransport().serve, address, echo)


async def test_stopping_lets_a_request_in_flight_finish_then_stops_listening() -> None:
    entered = trio.Event()
    release = trio.Event()

    async def slow(data: bytes, origin: Origin) -> bytes:
        entered.set()
        await release.wait()
        return data

    answers: list[bytes] = []
    with trio.fail_after(10):
        async with HttpTransport() as client:
            async with trio.open_nursery() as nursery:
                server = trio.CancelScope()

                async def serve(*, task_status: trio.TaskStatus[str]) -> None:
                    with server:
                        await HttpTransport().serve(ANY_PORT, slow, task_status=task_status)

                async def ask() -> None:
                    answers.append(await client.request(address, note("in flight")))

                address = await nursery.start(serve)
                nursery.start_soon(ask)
                await entered.wait()
                server.cancel()
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            # The server has stopped, and the request it was handling got its answer.
            assert answers == [note("in flight")]
            with pytest.raises(Unreachable):
                await client.request(address, note("still there?"))


async def test_idle_keep_alive_connections_do_not_hold_up_stopping() -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(HttpTransport().serve, ANY_PORT, echo)
                await client.request(address, note("keep me alive"))
                nursery.cancel_scope.cancel()
                stopping = trio.current_time()
            # Neither hypercorn's 5 s keep-alive nor the 3 s grace period was waited out.
            assert trio.current_time() - stopping < 1
            with pytest.raises(Unreachable):
                await client.request(address, note("gone"))


async def test_two_nodes_sync_a_tree_both_ways_over_http(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with node(tmp_path / "a") as (a, a_sync), node(tmp_path / "b") as (b, b_sync):
            address = await a_sync.start_server(ANY_PORT)
            assert address.startswith("http://127.0.0.1:")
            tree = await a.create_tree(name="notes")
            async with tree.transaction() as op:
                op.doc("todo").set("from_a", 1)
            await tree.grant(b.public_key, "write")
            peer_a = await b_sync.connect(address)
            assert peer_a == a.public_key
            await b_sync.add_tree_sync(peer_a, tree.root_id)
            await b_sync.sync_with_peer(peer_a)  # b pulls the tree it did not hold
            theirs = await b.open_tree(tree.root_id)
            async with theirs.transaction() as op:
                op.doc("todo").set("from_b", 2)
            async with tree.transaction() as op:
                op.doc("todo").set("from_a_again", 3)
            await b_sync.sync_with_peer(peer_a)
            assert await tree.tips() == await theirs.tips()
            expected = {"from_a": 1, "from_b": 2, "from_a_again": 3}
            assert (await tree.doc("todo")).to_dict() == expected
            assert (await theirs.doc("todo")).to_dict() == expected


async def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with (
            node(tmp_path / "a") as (a, a_sync),
            node(tmp_path / "b") as (b, b_sync),
            eidetica.open_instance(tmp_path / "c") as c,
            HttpTransport() as c_http,
            httpx.AsyncClient() as raw,
        ):
            address = await a_sync.start_server(ANY_PORT)
            api = f"{address}/api/v0"
            shared = await a.create_tree(name="shared")
            await shared.grant(b.public_key, "read")
            private = await a.create_tree(name="private")

            async def post(content: bytes, content_type: str = "application/json") -> int:
                response = await raw.post(
                    api, content=content, headers={"content-type": content_type}
                )
                return response.status_code

            anonymous = JSON.encode(SendEntries(tree=shared.root_id, entries=()))
            wrong_version = json.loads(anonymous)
            wrong_version["v"] = 99
            assert await post(b"this is not json") == 400
            assert await post(anonymous, "text/plain") == 415
            oversized = b"content-type: application/json\r\ncontent-length: %d\r\n" % (
                limits.MAX_MESSAGE_BYTES + 1
            )
            status, _ = status_and_body(
                await raw_post(address, oversized, b"x" * (limits.MAX_MESSAGE_BYTES + 1))
            )
            assert status == 413  # (over a bare socket: httpx warns on early answers)
            assert await post(json.dumps(wrong_version).encode()) == 400
            assert await post(anonymous) == 401  # valid, but no session

            # C proves its key over HTTP, then asks for a tree it may not read.
            link = Link(c_http, address, JSON)
            assert await link.handshake(c) == a.public_key
            unreadable = link.envelope(SendEntries(tree=private.root_id, entries=()))
            response = await raw.post(api, content=unreadable, headers=JSON_TYPE)
            assert response.status_code == 404
            assert error_code(response.content) == "not-found"
            with pytest.raises(RemoteError, match="not-found"):
                await link.call(SendEntries(tree=private.root_id, entries=()), ErrorReply)

            # None of that stopped the server: B syncs as usual.
            peer_a = await b_sync.connect(address)
            await b_sync.add_tree_sync(peer_a, shared.root_id)
            await b_sync.sync_with_peer(peer_a)
            assert await (await b.open_tree(shared.root_id)).tips() == await shared.tips()


async def test_large_answers_travel_gzipped_and_small_ones_plain() -> None:
    big = note("many entries " * 10_000)

    async def answer(data: bytes, origin: Origin) -> bytes:
        return big if error_code(data) == "internal" and b"big" in data else note("small")

    with trio.fail_after(10):
        async with HttpTransport() as client, serving(answer) as address:
            assert await client.request(address, note("big")) == big
            assert await client.request(address, note("tiny")) == note("small")
            async with httpx.AsyncClient() as raw:
                url = f"{address}/api/v0"
                for accept, encoding in [("gzip", "gzip"), ("identity", None)]:
                    headers = {**JSON_TYPE, "accept-encoding": accept}
                    async with raw.stream("POST", url, content=note("big"), headers=headers) as r:
                        wire = b"".join([chunk async for chunk in r.aiter_raw()])
                    assert r.headers.get("content-encoding") == encoding
                    assert (len(wire) < len(big) / 10) if encoding else (wire == big)


@pytest.mark.parametrize(("client_gzip", "server_gzip"), [(False, True), (True, False)])
async def test_compression_can_be_turned_off_at_either_end(
    client_gzip: bool, server_gzip: bool
) -> None:
    big = note("many entries " * 10_000)

    async def answer(data: bytes, origin: Origin) -> bytes:
        return big

    with trio.fail_after(10):
        async with (
            HttpTransport(compress=client_gzip) as client,
            serving(answer, compress=server_gzip) as address,
        ):
            assert await client.request(address, note("big")) == big
    assert client.wire_received == len(big)  # it came plain


async def fake_server(answer: bytes) -> AsyncIterator[str]:
    """An HTTP server that answers every request with the raw bytes ``answer``."""

    async def respond(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, respond, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


def gzipped_answer(body: bytes, encoding: str = "gzip") -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: {encoding}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (gzipped_answer(gzip.compress(b"\0" * (limits.MAX_MESSAGE_BYTES * 4))), "once inflated"),
        (gzipped_answer(gzip.compress(note("cut short"))[:-12]), "ends early"),
        (gzipped_answer(b"not gzip at all"), "broken gzip"),
        (gzipped_answer(gzip.compress(note("one")) + gzip.compress(note("two"))), "after the end"),
        (gzipped_answer(note("x"), encoding="br"), "not gzip"),
    ],
    ids=["bomb", "truncated", "garbage", "two-members", "unknown-encoding"],
)
async def test_a_bad_compressed_answer_is_a_transport_error(answer: bytes, error: str) -> None:
    with trio.fail_after(10):
        async with HttpTransport() as client, asynccontextmanager(fake_server)(answer) as at:
            with pytest.raises(TransportError, match=error):
                await client.request(at, note("hello"))


async def test_a_server_that_dribbles_its_answer_is_cut_off_at_the_timeout() -> None:
    async def dribble(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):  # a byte at a time, each well inside the read timeout
            await stream.send_all(b" ")
            await trio.sleep(0.1)

    with trio.fail_after(10):
        async with HttpTransport(timeout=1.0) as client, trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, dribble, 0, host="127.0.0.1"))
            at = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            # 1,000 bytes at 0.1 s each would take 100 s; fail_after(10) bounds the test.
            with pytest.raises(TransportError, match=r"within 1\.0 s"):
                await client.request(at, note("hello"))
            nursery.cancel_scope.cancel()
