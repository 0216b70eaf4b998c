"""Watching ``eidetica serve`` processes from outside: ``/metrics`` after a real sync,
``/health`` and ``/ready`` on a node that listens only on WebSocket, and the exit
codes of ``eidetica health``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.integration.test_serve_processes import cli, shared_tree, start, stop
from tests.processes import run


def sample(metrics: str, name: str) -> float:
    """The value of the series ``name`` (labels included) in an exposition; 0 if absent."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metrics_until(url: str, name: str, at_least: float, seconds: float = 20.0) -> str:
    """Scrape ``url`` until series ``name`` reaches ``at_least``; the last exposition."""
    deadline = time.monotonic() + seconds
    while True:
        text = httpx.get(url, timeout=5).text
        if sample(text, name) >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_metrics_of_serve_processes_move_with_a_real_sync(tmp_path: Path) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    tree = shared_tree(a_data, b_data, "write")
    a, a_said = start(a_data, "--listen", "http://127.0.0.1:0")
    try:
        a_address = a_said["listening"]
        before = httpx.get(a_address + "/metrics", timeout=5).text
        assert sample(before, "eidetica_entries_sent_total") == 0
        b, b_said = start(
            b_data, "--listen", "http://127.0.0.1:0", "--peer", a_address, "--sync", tree
        )
        try:
            b_metrics = metrics_until(
                b_said["listening"] + "/metrics",
                'eidetica_sync_rounds_total{outcome="complete"}',
                1,
            )
            assert sample(b_metrics, 'eidetica_sync_rounds_total{outcome="complete"}') >= 1
            assert sample(b_metrics, "eidetica_entries_received_total") >= 3
            assert sample(b_metrics, "eidetica_entries_received_bytes_total") > 0
            assert sample(b_metrics, "eidetica_sync_duration_seconds_count") >= 1
            assert sample(b_metrics, 'eidetica_peers{state="up"}') == 1
            assert sample(b_metrics, "eidetica_trees_synced") == 1
            a_metrics = httpx.get(a_address + "/metrics", timeout=5).text
            assert sample(a_metrics, "eidetica_entries_sent_total") >= 3
            assert sample(a_metrics, "eidetica_entries_sent_bytes_total") > 0
            assert "eidetica_intake_held_entries 0.0" in a_metrics
            status = cli(b_data, "status")
            assert f"tree {tree} entries 3 tips 1 peer {a_said['key']} in step" in status
        finally:
            stop(b)
    finally:
        stop(a)


def test_ws_only_node_answers_health_and_ready_to_plain_gets(tmp_path: Path) -> None:
    node, said = start(tmp_path / "a", "--listen", "ws://127.0.0.1:0")
    try:
        base = "http://" + said["listening"].removeprefix("ws://")
        for path in ("/health", "/ready"):
            answer = httpx.get(base + path, timeout=5)
            assert answer.status_code == 200
            assert answer.json()["status"] == "ok"
            assert answer.json()["key"] == said["key"]
        assert "eidetica_servers_listening 1.0" in httpx.get(base + "/metrics", timeout=5).text
    finally:
        stop(node)


def test_eidetica_health_exit_codes(tmp_path: Path) -> None:
    data = tmp_path / "a"
    cli(data, "init")
    nobody = run("health", data=data)
    assert nobody.returncode == 1
    assert nobody.stderr.count("\n") == 1
    assert "no node runs" in nobody.stderr
    assert "eidetica serve" in nobody.stderr
    node, _ = start(data)  # listens nowhere: the control socket is its admin path
    try:
        ready = run("health", data=data)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout.startswith("ready: engine running, storage ok, listening nowhere")
        details = json.loads(cli(data, "health", "--json"))
        assert details["status"] == "ok"
        assert details["problems"] == []
        assert "eidetica_peers" in cli(data, "health", "--metrics")
    finally:
        stop(node)
    after = run("health", data=data)
    assert after.returncode == 1
    assert "no node runs" in after.stderr
