"""A node's read-only pages over real sockets: ``/health``, ``/ready``, ``/metrics``,
``/status.json`` and ``/`` on an HTTP listener, and the same as plain ``GET``s on a
WebSocket listener, for nodes with no HTTP listener."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import trio

import eidetica
from eidetica.actors.admin import Admin
from eidetica.actors.engine.status import ServerStatus, SyncStatus
from eidetica.actors.sync import Sync
from eidetica.protocol.intake import Intake
from tests.nodes import ws_node


@asynccontextmanager
async def http_node(path: Path) -> AsyncIterator[tuple[eidetica.Instance, Sync, str]]:
    async with eidetica.open_instance(path) as inst, inst.sync() as sync:
        address = await sync.start_server("http://127.0.0.1:0")
        yield inst, sync, address


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url)


def sample(metrics: str, name: str) -> float:
    """The value of the series ``name`` (with its labels, if any) in an exposition."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in:\n{metrics}")


async def synced_pair(a: Sync, b: Sync, tree_id: str, address: str) -> str:
    peer = await b.connect(address)
    await b.add_tree_sync(peer, tree_id)
    await b.sync_with_peer(peer)
    return peer


async def test_http_listener_serves_health_ready_metrics_and_status(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            http_node(tmp_path / "a") as (a, a_sync, address),
            eidetica.open_instance(tmp_path / "b") as b,
            b.sync() as b_sync,
        ):
            tree = await a.create_tree(name="shared")
            await tree.grant(b.public_key, "write")
            await synced_pair(a_sync, b_sync, tree.root_id, address)

            health = await get(address + "/health")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            assert health.json()["key"] == a.public_key
            ready = await get(address + "/ready")
            assert ready.status_code == 200
            assert ready.json()["servers"] == {address: True}

            metrics = await get(address + "/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert sample(text, "eidetica_entries_sent_total") >= 2
            known = sum(
                sample(text, f'eidetica_peers{{state="{state}"}}')
                for state in ("dialling", "up", "lost", "down")
            )
            assert known == 1
            assert sample(text, "eidetica_servers_listening") == 1

            status = (await get(address + "/status.json")).json()
            assert status["key"] == a.public_key
            assert b.public_key in status["status"]["peers"]
            page = await get(address + "/")
            assert page.status_code == 200
            assert "text/html" in page.headers["content-type"]
            assert "default-src 'none'" in page.headers["content-security-policy"]

            b_status = await b_sync.status()
            lag = b_status.trees[tree.root_id].peers[a.public_key]
            assert lag.in_step
            assert lag.behind == 0
            assert b_status.trees[tree.root_id].entries == 2


async def test_ws_only_node_answers_plain_gets_and_still_syncs(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ws_node(tmp_path / "a") as a, ws_node(tmp_path / "b") as b:
            address = await a.sync.start_server("ws://127.0.0.1:0")
            base = "http://" + address.removeprefix("ws://")
            for path in ("/health", "/ready"):
                answer = await get(base + path)
                assert answer.status_code == 200, path
                assert answer.json()["status"] == "ok"
                assert answer.headers["connection"] == "close"
            tree = await a.inst.create_tree(name="over ws")
            await tree.grant(b.inst.public_key, "write")
            await synced_pair(a.sync, b.sync, tree.root_id, address)
            metrics = (await get(base + "/metrics")).text
            assert sample(metrics, "eidetica_entries_sent_total") >= 2
            assert (await get(base + "/nope")).status_code in (400, 426)
            page = await get(base + "/")
            assert "<title>eidetica node</title>" in page.text


def test_ready_is_503_with_what_to_do_while_a_server_is_down() -> None:
    down = ServerStatus("http://127.0.0.1:1", restarts=1, last_error="OSError()", listening=False)
    status = SyncStatus(
        servers=[down],
        peers={},
        retries=[],
        retries_dropped=0,
        refused_requests=0,
        dropped_notices=0,
        crashed=[],
    )
    admin = Admin("ed25519:key", lambda: status, lambda: "running", lambda: True, Intake())
    health = admin.answer("/health")
    assert health is not None
    assert health.status == 200
    ready = admin.answer("/ready")
    assert ready is not None
    assert ready.status == 503
    [problem] = msgspec.json.decode(ready.body)["problems"]
    assert "http://127.0.0.1:1 is not listening" in problem
    assert "restarts by itself" in problem
    assert admin.answer("/elsewhere") is None


def test_pages_asked_in_a_loop_read_the_status_again_only_when_something_changed() -> None:
    reads: list[int] = []
    mark = [0]

    def status() -> SyncStatus:
        reads.append(1)
        return SyncStatus([], {}, [], 0, 0, 0, [])

    admin = Admin(
        "ed25519:key", status, lambda: "running", lambda: True, Intake(), changes=lambda: mark[0]
    )
    for _ in range(50):
        for path in ("/status.json", "/metrics", "/ready"):
            assert admin.answer(path) is not None
    assert len(reads) == 1
    mark[0] += 1  # an event, or a stored batch
    admin.answer("/status.json")
    assert len(reads) == 2
