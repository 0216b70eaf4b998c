"""Two ``eidetica serve`` processes, configured only by flags, sync a tree over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "eidetica.cli"]


def cli(data: Path, *args: str) -> str:
    result = subprocess.run(
        [*COMMAND, "--data", str(data), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip()


def start(data: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``serve``; return the process and what it printed before 'ready'."""
    process = subprocess.Popen(
        [*COMMAND, "--data", str(data), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    said: dict[str, str] = {}
    for line in process.stdout:
        word, _, rest = line.strip().partition(" ")
        if word == "ready":
            return process, said
        said[word] = rest
    pytest.fail(f"serve stopped early: {process.communicate(timeout=10)[1]}")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_two_serve_processes_sync_a_tree_and_stop_cleanly(tmp_path: Path) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    b_key = cli(b_data, "init")
    tree = cli(a_data, "tree", "create", "shared")
    cli(a_data, "put", tree, "todo", "milk", '{"done": false}')
    # Let B read and write: grant through A's data directory before A serves.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, trio, eidetica\n"
            "async def main(d, t, k):\n"
            "    async with eidetica.open_instance(d) as inst:\n"
            "        await (await inst.open_tree(t)).grant(k, 'write')\n"
            "trio.run(main, *sys.argv[1:])",
            str(a_data),
            tree,
            b_key,
        ],
        check=True,
        timeout=60,
    )
    a, a_said = start(a_data, "--listen", "http://127.0.0.1:0")
    try:
        address = a_said["listening"]
        assert address.startswith("http://127.0.0.1:")
        # B pulls the tree once, then serves with A as a peer syncing it.
        assert cli(b_data, "sync", tree, "--peer", address).startswith("synced")
        assert json.loads(cli(b_data, "get", tree, "todo", "milk.done")) is False
        b, _ = start(b_data, "--listen", "http://127.0.0.1:0", "--peer", address, "--sync", tree)
        stop(b)
    finally:
        err = stop(a)
    assert "SIGTERM" in err
    assert tree in cli(b_data, "tree", "list")


def test_serve_on_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    a, said = start(tmp_path / "a", "--listen", "http://127.0.0.1:0")
    try:
        result = subprocess.run(
            [*COMMAND, "--data", str(tmp_path / "b"), "serve", "--listen", said["listening"]],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("eidetica:")
    finally:
        stop(a)
