"""The ``eidetica`` command against a real data directory: in this process where only
its output and code matter, as a real process where the process boundary does (exit
codes on signals and closed pipes, what it imports)."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import eidetica
from eidetica import cli
from eidetica.actors import control
from eidetica.actors.engine.status import SyncingStatus, SyncStatus
from eidetica.actors.state import SYNC_TREE_KEY, SyncState
from eidetica.actors.transports.admission import ServerLimits
from eidetica.errors import StorageError
from eidetica.protocol.keys import SigningKey
from eidetica.storage import device
from eidetica.storage.sqlite import SqliteBackend
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


def test_the_command_knows_a_node_by_its_key_file_and_its_sync_tree() -> None:
    """Names the command keeps itself so as not to import what holds them."""
    assert cli._KEY_FILE == device.KEY_FILE
    assert cli._SYNC_TREE_KEY == SYNC_TREE_KEY


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
    data = tmp_path / "node"
    assert run("init", data=data).returncode == 0
    result = run(*args, data=data)
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


# In this process: what a command prints and its exit code.

Cli = Callable[..., tuple[int, str, str]]
"""``eidetica ARGS...``, run in this process: its exit code, stdout and stderr."""


@pytest.fixture
def eidetica_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Iterator[Cli]:
    """``eidetica ARGS...`` run by ``cli.main`` here: its code, stdout and stderr. The
    root logger it sets up is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield call
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def node(tmp_path: Path, eidetica_cli: Cli) -> Path:
    """A node's data directory, made by ``init``, holding a tree named 'notes'
    whose ``todo`` store holds ``{"milk": {"done": false}, "list": [1, 2]}``."""
    data = tmp_path / "node"
    assert eidetica_cli("--data", str(data), "init")[0] == 0
    assert eidetica_cli("--data", str(data), "tree", "create", "notes")[0] == 0
    assert eidetica_cli("--data", str(data), "put", "notes", "todo", "milk.done", "false")[0] == 0
    assert eidetica_cli("--data", str(data), "put", "notes", "todo", "list", "[1, 2]")[0] == 0
    return data


@pytest.mark.parametrize(
    "args",
    [["id"], ["tree", "list"], ["get", "notes", "todo"], ["peer", "list"], ["backup", "copy"]],
)
def test_a_command_on_a_missing_node_says_how_to_make_one_and_makes_nothing(
    tmp_path: Path, eidetica_cli: Cli, args: list[str]
) -> None:
    data = tmp_path / "deep" / "x"
    code, out, err = eidetica_cli("--data", str(data), *args)
    assert (code, out) == (1, "")
    assert err == (
        f"eidetica: no node in {data}: create one with 'eidetica --data {data} init',"
        " or name another with --data\n"
    )
    assert not (tmp_path / "deep").exists()


def test_a_data_path_naming_a_file_is_refused_in_one_line(
    tmp_path: Path, eidetica_cli: Cli
) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    code, _, err = eidetica_cli("--data", str(file), "tree", "list")
    assert code == 1
    assert err.startswith(f"eidetica: {file} is a file, not a node's data directory: create one")
    assert err.count("\n") == 1


def test_global_flags_may_follow_the_command(node: Path, eidetica_cli: Cli) -> None:
    code, key, _ = eidetica_cli("--data", str(node), "id")
    assert code == 0 and key.startswith("ed25519:")
    assert eidetica_cli("id", "--data", str(node)) == (0, key, "")
    assert eidetica_cli("--data", "elsewhere", "id", "--data", str(node))[:2] == (0, key)
    code, out, _ = eidetica_cli("tree", "list", "--log-level", "debug", "--data", str(node))
    assert code == 0 and out.split()[1] == "notes"


def test_a_tree_is_named_by_its_id_or_its_unique_name(node: Path, eidetica_cli: Cli) -> None:
    data = ("--data", str(node))
    _, listed, _ = eidetica_cli(*data, "tree", "list")
    tree_id = listed.split()[0]
    assert eidetica_cli(*data, "get", tree_id, "todo", "milk")[:2] == (0, '{"done": false}\n')
    assert eidetica_cli(*data, "get", "notes", "todo", "milk")[:2] == (0, '{"done": false}\n')
    assert eidetica_cli(*data, "get", "nope", "todo") == (
        1,
        "",
        "eidetica: no tree here is named 'nope', and it is no tree id:"
        " 'eidetica tree list' shows each tree's id and name\n",
    )
    eidetica_cli(*data, "tree", "create", "notes")
    assert eidetica_cli(*data, "get", "notes", "todo") == (
        1,
        "",
        "eidetica: 2 trees are named 'notes': give one's id ('eidetica tree list' shows them)\n",
    )


def test_a_value_that_is_not_json_is_refused_with_how_to_quote_it(
    node: Path, eidetica_cli: Cli
) -> None:
    code, _, err = eidetica_cli("--data", str(node), "put", "notes", "todo", "eggs", "milk")
    assert code == 2
    assert err.startswith("""eidetica: the value must be JSON (a string needs quotes: '"milk"')""")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("eggs", "the store has no key 'eggs'"),
        ("milk.x", "'milk' has no key 'x'"),
        ("milk.done.x", "'milk.done' holds false, not keys"),
        ("list.0", "'list' holds a list, not keys"),
    ],
)
def test_get_of_a_missing_path_says_which_part_is_missing(
    node: Path, eidetica_cli: Cli, path: str, reason: str
) -> None:
    code, out, err = eidetica_cli("--data", str(node), "get", "notes", "todo", path)
    assert (code, out) == (1, "")
    assert err == f"eidetica: nothing at {path!r} in todo: {reason}\n"


def test_a_write_through_a_list_is_refused_and_the_list_kept(node: Path, eidetica_cli: Cli) -> None:
    data = ("--data", str(node))
    assert eidetica_cli(*data, "put", "notes", "todo", "list.0.b", "1") == (
        1,
        "",
        "eidetica: cannot write 'list.0.b': 'list' holds a list, not keys;"
        " put the whole new value at 'list' instead\n",
    )
    assert eidetica_cli(*data, "get", "notes", "todo", "list")[:2] == (0, "[1, 2]\n")


def test_delete_removes_a_key_and_refuses_a_missing_one(node: Path, eidetica_cli: Cli) -> None:
    data = ("--data", str(node))
    assert eidetica_cli(*data, "delete", "notes", "todo", "milk.done") == (0, "", "")
    assert eidetica_cli(*data, "get", "notes", "todo")[:2] == (0, '{"milk": {}, "list": [1, 2]}\n')
    assert eidetica_cli(*data, "delete", "notes", "todo", "milk.done") == (
        1,
        "",
        "eidetica: nothing to delete at 'milk.done' in todo: 'milk' has no key 'done'\n",
    )


def test_tree_revoke_takes_a_grant_away(node: Path, eidetica_cli: Cli) -> None:
    data = ("--data", str(node))
    other = SigningKey.generate().public_key
    assert eidetica_cli(*data, "tree", "grant", "notes", other, "write")[0] == 0
    assert eidetica_cli(*data, "tree", "revoke", "notes", other) == (0, "", "")
    shown = json.loads(eidetica_cli(*data, "tree", "show", "notes")[1])
    assert other not in shown["settings"]["auth"]
    code, _, err = eidetica_cli(*data, "tree", "revoke", "notes", other)
    assert code == 1
    assert err == (
        f"eidetica: {other} was granted nothing in tree {shown['root']}:"
        f" 'eidetica tree show {shown['root']}' lists the grants under auth\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--listen", "127.0.0.1:8080"],
        ["serve", "--peer", "example.org"],
        ["sync", "notes", "--peer", "127.0.0.1:8080"],
        ["peer", "add", "localhost:8080"],
    ],
)
def test_an_address_without_a_scheme_says_how_to_write_one(
    node: Path, eidetica_cli: Cli, args: list[str]
) -> None:
    code, out, err = eidetica_cli("--data", str(node), *args)
    assert (code, out) == (2, "")
    assert err.endswith("is not an address: write http://HOST:PORT or ws://HOST:PORT\n")
    assert "ws-in" not in err and err.count("\n") == 1


def _remember_peer(data: Path, key: str, address: str) -> None:
    """Write a peer into the node's sync tree, as ``peer add`` leaves it."""

    async def remember() -> None:
        async with eidetica.open_instance(data) as inst:
            await (await SyncState.open(inst)).add_peer(key, address)

    trio.run(remember)


def test_peers_are_listed_and_removed_without_a_running_node(node: Path, eidetica_cli: Cli) -> None:
    data = ("--data", str(node))
    assert eidetica_cli(*data, "peer", "list") == (0, "", "")  # no sync tree made for it
    assert len(eidetica_cli(*data, "tree", "list")[1].splitlines()) == 1
    peer = SigningKey.generate().public_key
    _remember_peer(node, peer, "ws://127.0.0.1:9")
    assert eidetica_cli(*data, "peer", "list") == (
        0,
        f"{peer} remembered ws://127.0.0.1:9 trees 0\n",
        "",
    )
    # The sync tree that holds the peers is the node's own: not listed among the trees.
    assert [line.split()[1] for line in eidetica_cli(*data, "tree", "list")[1].splitlines()] == [
        "notes"
    ]
    assert eidetica_cli(*data, "peer", "remove", peer) == (0, "", "")
    assert eidetica_cli(*data, "peer", "list") == (0, "", "")
    assert eidetica_cli(*data, "peer", "remove", peer) == (
        1,
        "",
        f"eidetica: no peer {peer} here: 'eidetica peer list' shows the peers\n",
    )


def test_a_backup_is_a_data_directory_that_opens_as_the_same_node(
    node: Path, tmp_path: Path, eidetica_cli: Cli
) -> None:
    copy = tmp_path / "copy"
    assert eidetica_cli("--data", str(node), "backup", str(copy)) == (
        0,
        f"backed up {node} to {copy}\n",
        "",
    )
    assert_restores(node, copy, eidetica_cli)
    code, _, err = eidetica_cli("--data", str(node), "backup", str(copy))
    assert code == 1
    assert err == f"eidetica: {copy} exists: name a new directory for the backup\n"


def test_a_backup_that_fails_leaves_no_directory_behind(
    node: Path, tmp_path: Path, eidetica_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: SqliteBackend, dest: Path) -> None:
        dest.write_bytes(b"half a database")
        raise StorageError("database or disk is full")

    monkeypatch.setattr(SqliteBackend, "backup", disk_full)
    copy = tmp_path / "copy"
    code, _, err = eidetica_cli("--data", str(node), "backup", str(copy))
    assert (code, err) == (1, "eidetica: database or disk is full\n")
    assert not copy.exists()  # a retry is not told the directory exists


def assert_restores(node: Path, copy: Path, eidetica_cli: Cli) -> None:
    """``copy`` is a whole, owner-only node: the same key and the same documents."""
    assert sorted(path.name for path in copy.iterdir()) == ["device.key", "eidetica.db"]
    assert {oct(path.stat().st_mode & 0o777) for path in copy.iterdir()} == {"0o600"}
    with sqlite3.connect(copy / "eidetica.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    for args in (["id"], ["tree", "list"], ["get", "notes", "todo"]):
        assert eidetica_cli("--data", str(copy), *args) == eidetica_cli("--data", str(node), *args)


# As a real process: signals, pipes, imports.


def test_the_command_line_imports_no_http_server(node: Path) -> None:
    """Importing the command costs a command that a running node runs nothing but
    the command line; one that opens the directory imports no HTTP server."""
    heavy = ("hypercorn", "quart", "flask", "httpx", "trio_websocket")
    script = (
        "import json, sys\n"
        "import eidetica.cli\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
        "eidetica.cli.main(sys.argv[1:])\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--data", str(node), "get", "notes", "todo"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    imported, value, after_get = result.stdout.splitlines()
    assert json.loads(value) == {"milk": {"done": False}, "list": [1, 2]}
    assert not {*heavy, "trio"} & set(json.loads(imported))
    assert not set(heavy) & set(json.loads(after_get))


def test_output_into_a_reader_that_went_away_ends_quietly(node: Path) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--data", str(node), "get", "notes", "todo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # as `head` does, before the command writes a byte
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (141, "")


def test_ctrl_c_during_sync_is_one_line_and_exit_130(node: Path) -> None:
    with socket.socket() as silent:  # a peer that takes the connection, then says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        process = subprocess.Popen(
            [*COMMAND, "--data", str(node), "sync", "notes", "--peer", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(60)
        connection, _ = silent.accept()  # the sync is under way
        with connection:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
    assert (process.returncode, out) == (130, "")
    assert err == "eidetica: interrupted; what was stored before stays stored\n"
    assert json.loads(run("get", "notes", "todo", "milk", data=node).stdout) == {"done": False}


def test_a_sync_under_way_is_shown_in_status_and_noted_by_get() -> None:
    tree = "t" * 64
    syncing = SyncingStatus("ed25519:A", tree, 4096, 1_000_000, 20_000)
    status = SyncStatus([], {}, [], 0, 0, 0, [], syncing=[syncing])
    shown = cli._status("ed25519:me", status, as_json=False)
    assert f"syncing {tree} with ed25519:A: 4,096 of 20,000 entries so far" in shown
    assert cli._partial(status, tree) == [
        f"eidetica: note: syncing {tree} with ed25519:A: 4,096 of 20,000 entries so far;"
        " this may be partial"
    ]
    assert cli._partial(status, "u" * 64) == []
