"""The ``eidetica`` command, run as a real process against a real data directory."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from eidetica import cli
from eidetica.actors import control
from eidetica.actors.transports.admission import ServerLimits
from tests.processes import COMMAND, run


def test_tree_put_get_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "node"
    key = run("init", data=data).stdout.strip()
    assert key.startswith("ed25519:") and run("id", data=data).stdout.strip() == key
    tree = run("tree", "create", "notes", data=data).stdout.strip()
    assert run("put", tree, "todo", "milk", '{"done": false}', data=data).returncode == 0
    assert json.loads(run("get", tree, "todo", "milk.done", data=data).stdout) is False
    assert json.loads(run("get", tree, "todo", data=data).stdout) == {"milk": {"done": False}}
    assert tree in run("tree", "list", data=data).stdout
    shown = json.loads(run("tree", "show", tree, data=data).stdout)
    assert shown["settings"]["name"] == "notes" and len(shown["tips"]) == 1
    assert shown["voided"] == {}


def test_every_server_limit_is_a_serve_flag() -> None:
    """What the library lets a server bound, an operator can set."""
    assert set(cli._LIMITS) == {field.name for field in dataclasses.fields(ServerLimits)}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["id", "--no-such-flag"], 2, "unrecognized arguments"),
        (["put", "0" * 64, "d", "x", "not json"], 1, "no tree"),
        (["get", "0" * 64, "d", "x"], 1, "no tree"),
        (["serve", "--periodic-sync", "soon"], 2, "periodic-sync must be a number"),
        (["serve", "--retry-sweep", "-1"], 2, "retry-sweep must be a number"),
        (["serve", "--connection-check", "inf"], 2, "connection-check must be a number"),
        (["serve", "--connection-check", "1e-6"], 2, "at least 0.1"),
        (["serve", "--max-connections", "1.5"], 2, "max-connections must be a whole number"),
        (["serve", "--max-buffered-bytes", "64MiB"], 2, "max-buffered-bytes must be a whole"),
        (["serve", "--handshake-timeout", "0"], 2, "handshake-timeout must be a number above 0"),
    ],
)
def test_mistakes_end_with_one_clear_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = run(*args, data=tmp_path / "node")
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_data_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    result = run("id", data=not_a_directory)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_serve_prints_its_key_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--data", str(tmp_path / "node"), "serve", "--listen", "sim://solo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # blocks until the node says it is ready
        lines.append(line.strip())
        if line.strip() == "ready":
            break
    assert lines[0] == "listening sim://solo" and lines[1].startswith("key ed25519:")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in err
    assert "SIGTERM" in err


async def test_the_control_socket_works_under_a_long_data_path(tmp_path: Path) -> None:
    """A socket path has a length limit (about 108 bytes); data directories do not."""
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    path = control.socket_path(deep)

    async def answer(command: dict[str, object]) -> control.ControlAnswer:
        return control.ControlAnswer(0, out=f"ran {command['command']}\n")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, path, answer)
            reply = await control.ask(path, {"command": "id"})
            nursery.cancel_scope.cancel()
    assert reply == control.ControlAnswer(0, out="ran id\n")
    assert not path.exists()
    assert await control.ask(path, {"command": "id"}) is None  # nobody there now


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("periodic_sync = true", "periodic_sync must be a number of seconds"),
        ('listen = "http://127.0.0.1:0"', "listen must be a list of strings"),
        ("periodic-sync = 30", "unknown setting 'periodic-sync'"),
        ('max_connections = "many"', "max_connections must be a positive number"),
        ("message_timeout = -1", "message-timeout must be a number above 0"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml + "\n")
    result = run("--config", str(config), "serve", data=tmp_path / "node")
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


async def test_a_control_client_that_sends_nothing_is_refused_in_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = control.socket_path(tmp_path)

    async def never(command: dict[str, object]) -> control.ControlAnswer:
        raise AssertionError("no command came")

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, path, never)
        async with await trio.open_unix_socket(str(path)) as silent:
            began = trio.current_time()
            answer = await silent.receive_some()  # it sends nothing at all
            assert trio.current_time() - began == control.READ_SECONDS
        assert b"no request within" in answer and b'"code":2' in answer
        nursery.cancel_scope.cancel()
