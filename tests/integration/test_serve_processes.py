"""``eidetica serve`` processes, configured only by flags: two sync a tree over HTTP,
and the other commands reach a running node through its control socket."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import COMMAND, run


def cli(data: Path, *args: str) -> str:
    """Run a command that must succeed; its output."""
    result = run(*args, data=data)
    assert result.returncode == 0, result.stderr
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
    tree = shared_tree(a_data, b_data, "write")
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


def test_commands_reach_a_running_node(tmp_path: Path) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    a, a_said = start(a_data, "--listen", "ws://127.0.0.1:0")
    try:
        # B listens nowhere: it dials. Its timers are set by flags.
        b, _ = start(b_data, "--periodic-sync", "30", "--connection-check", "10")
        try:
            socket = a_data / "control.sock"
            assert stat.S_IMODE(socket.stat().st_mode) == 0o600
            # Each command runs in the node that holds the directory.
            tree = cli(a_data, "tree", "create", "shared")
            b_key = cli(b_data, "id")
            cli(a_data, "tree", "grant", tree, b_key, "write")
            cli(a_data, "put", tree, "todo", "milk", '{"done": false}')
            synced = cli(b_data, "sync", tree, "--peer", a_said["listening"])
            assert synced == f"synced {tree} with {a_said['key']}"
            assert json.loads(cli(b_data, "get", tree, "todo")) == {"milk": {"done": False}}
            assert tree in cli(b_data, "tree", "list")
            # Mistakes come back as they would from the directory: one line, the code.
            bad_json = run("put", tree, "todo", "eggs", "{not json", data=a_data)
            missing = run("get", "f" * 64, "todo", data=a_data)
            not_an_id = run("get", "zz", "todo", data=a_data)
            bad_sync = run("sync", "zz", "--peer", a_said["listening"], data=b_data)
            codes = [r.returncode for r in (bad_json, missing, not_an_id, bad_sync)]
            assert codes == [2, 1, 1, 1]
            for result in (bad_json, missing, not_an_id, bad_sync):
                assert result.stderr.count("\n") == 1 and result.stderr.startswith("eidetica:")
            # A value bigger than a small request limit goes through the node too.
            cli(a_data, "put", tree, "notes", "long", json.dumps("x" * 100_000))
            assert len(json.loads(cli(a_data, "get", tree, "notes", "long"))) == 100_000
            # A backup taken while the node serves (and holds the file) is whole; a
            # relative destination is the command's, not the node's.
            said = subprocess.run(
                [*COMMAND, "--data", str(a_data), "backup", "copy"],
                cwd=tmp_path,
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            assert said == f"backed up {a_data} to {tmp_path / 'copy'}\n"
        finally:
            stop(b)
    finally:
        stop(a)
    assert not socket.exists()
    # With the node stopped, the same commands open the directory itself.
    assert json.loads(cli(a_data, "get", tree, "todo", "milk.done")) is False
    copy = tmp_path / "copy"
    with sqlite3.connect(copy / "eidetica.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    for args in (["id"], ["tree", "list"], ["get", tree, "todo"], ["get", tree, "notes"]):
        assert cli(copy, *args) == cli(a_data, *args)


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; the caller binds it soon)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def shared_tree(owner: Path, other: Path, permission: str) -> str:
    """A tree created at ``owner`` holding ``todo.milk``, that ``other`` may use."""
    other_key = cli(other, "init")
    cli(owner, "init")
    tree = cli(owner, "tree", "create", "shared")
    cli(owner, "put", tree, "todo", "milk", '{"done": false}')
    cli(owner, "tree", "grant", tree, other_key, permission)
    return tree


def wait_until_it_holds(data: Path, tree: str) -> None:
    """Poll the node serving ``data`` until it holds ``tree``, for at most 30 s: it is
    another process, with nothing in this one to wait on."""
    deadline = time.monotonic() + 30
    while json.loads(run("get", tree, "todo", data=data).stdout or "null") is None:
        assert time.monotonic() < deadline, f"{data.name} never fetched the tree"
        time.sleep(0.2)
    assert json.loads(cli(data, "get", tree, "todo", "milk.done")) is False


def test_serve_processes_started_in_the_wrong_order_link_and_fetch_by_themselves(
    tmp_path: Path,
) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    tree = shared_tree(a_data, b_data, "write")
    address = f"ws://127.0.0.1:{free_port()}"
    # B starts first, told to sync a tree it does not hold with a node that is down.
    b, _ = start(b_data, "--listen", "ws://127.0.0.1:0", "--peer", address, "--sync", tree)
    try:
        a, _ = start(a_data, "--listen", address)
        try:
            wait_until_it_holds(b_data, tree)
        finally:
            stop(a)
    finally:
        err = stop(b)
    assert f"could not reach {address} yet" in err


def test_peer_add_on_a_running_node_keeps_dialling_a_peer_that_is_down(tmp_path: Path) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    tree = shared_tree(b_data, a_data, "read")
    address = f"ws://127.0.0.1:{free_port()}"
    a, _ = start(a_data, "--listen", "ws://127.0.0.1:0")
    try:
        said = cli(a_data, "peer", "add", address, "--sync", tree)  # B is not up yet
        assert said == f"dialling {address} until it answers"
        b, _ = start(b_data, "--listen", address)
        try:
            wait_until_it_holds(a_data, tree)
        finally:
            stop(b)
    finally:
        stop(a)


def test_peer_add_without_a_running_node_says_how_to_keep_dialling(tmp_path: Path) -> None:
    address = f"ws://127.0.0.1:{free_port()}"
    cli(tmp_path / "a", "init")
    result = run("peer", "add", address, data=tmp_path / "a")
    assert result.returncode == 1
    assert f"run 'eidetica serve --peer {address}' to keep dialling it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_accept_trees_any_takes_a_tree_a_cli_client_pushes(tmp_path: Path) -> None:
    hub_data, client_data = tmp_path / "hub", tmp_path / "client"
    tree = shared_tree(client_data, hub_data, "read")  # the hub never heard of it
    hub, said = start(hub_data, "--listen", "http://127.0.0.1:0", "--accept-trees", "any")
    try:
        synced = cli(client_data, "sync", tree, "--peer", said["listening"])
        assert synced.startswith(f"synced {tree} with ")
        wait_until_it_holds(hub_data, tree)
    finally:
        err = stop(hub)
    assert f"took in tree {tree}" in err


def test_serve_refuses_an_accept_trees_that_is_no_policy_in_one_line(tmp_path: Path) -> None:
    result = run("serve", "--accept-trees", "any", "--accept-trees", "x", data=tmp_path / "n")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "eidetica: accept-trees takes 'any', 'chosen', or peer keys, not a mix of them"
    )


def test_status_shows_a_running_nodes_servers_and_peers_and_says_when_none_runs(
    tmp_path: Path,
) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    tree = shared_tree(a_data, b_data, "read")
    a, a_said = start(a_data, "--listen", "ws://127.0.0.1:0")
    try:
        b, _ = start(b_data, "--peer", a_said["listening"], "--sync", tree)
        try:
            wait_until_it_holds(b_data, tree)
            shown = json.loads(cli(b_data, "status", "--json"))
            a_key = cli(a_data, "id")
            assert shown["key"] == cli(b_data, "id") and shown["servers"] == []
            assert shown["peers"][a_key]["state"] == "up"
            assert shown["peers"][a_key]["trees"] == [tree]
            lines = cli(b_data, "status").splitlines()
            assert lines[0] == f"key {shown['key']}"
            assert any(line.startswith(f"peer {a_key} up ") for line in lines)
            link = shown["peers"][a_key]["address"] or shown["peers"][a_key]["dial"]
            assert cli(b_data, "peer", "list") == f"{a_key} up {link} trees 1"
            cli(b_data, "peer", "remove", a_key)
            assert cli(b_data, "peer", "list") == ""
        finally:
            stop(b)
    finally:
        err = stop(a)
    assert "synced" in err or "linked to peer" in err  # the serving node says what it does
    result = run("status", data=a_data)  # no node runs there now
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"eidetica: no node runs on {a_data}: start one with 'eidetica serve'"
    )
