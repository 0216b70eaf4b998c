"""Files at rest: another local user can read none of a node's files, and cannot have
the node run a command for them.

A node's data directory is 0700 and its database, the database's side files and the
device key are 0600, whatever the umask, and a wider one left from before is
tightened with one warning. The control socket is 0600, and behind that the node
checks who connected (``SO_PEERCRED``): the real tests of that switch a child process
to the unprivileged uid 65534, so they need root and Linux.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

import eidetica
from eidetica.actors import control, control_client
from eidetica.errors import StorageError, TransportError
from eidetica.storage.instance import DATABASE_FILE
from eidetica.storage.sqlite import SqliteBackend

OTHER_UID = 65534
"""``nobody``: a local user who is not the node's."""

needs_root_and_peercred = pytest.mark.skipif(
    os.geteuid() != 0 or not hasattr(socket, "SO_PEERCRED"),
    reason="switching a child to another uid needs root; the check needs SO_PEERCRED",
)

_DROP_PRIVILEGES = f"os.setgroups([]); os.setgid({OTHER_UID}); os.setuid({OTHER_UID})"

_CONNECT_AS_OTHER = f"""
import os, socket, sys
os.chdir(sys.argv[1])
{_DROP_PRIVILEGES}
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect("control.sock")
print("connected", flush=True)
try:
    client.sendall(b'{{"command": {{"command": "id"}}}}\\n')
except OSError:
    pass  # a node that refused may close before the request is in
answer = b""
try:
    while chunk := client.recv(65536):
        answer += chunk
except ConnectionResetError:
    pass
print(answer.decode(), flush=True)
"""
"""Connect to ``control.sock`` in the folder argv[1] as uid 65534 and send a command;
print ``connected``, then whatever the node answered."""

_LISTEN_AS_OTHER = f"""
import os, socket, sys
os.chdir(sys.argv[1])
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind("control.sock")
{_DROP_PRIVILEGES}
server.listen()
print("listening", flush=True)
sys.stdin.read()
"""
"""A fake node: listen at ``control.sock`` in argv[1] as uid 65534 until stdin ends."""


@pytest.fixture(params=[0o022, 0o002, 0o000], ids=lambda mask: f"umask{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A permissive process umask for the test's length (it is process-wide)."""
    mask: int = request.param
    previous = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def warnings_from(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == logger and record.levelno == logging.WARNING
    ]


async def test_a_new_node_is_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    directory = tmp_path / "node"
    async with eidetica.open_instance(directory) as inst:
        tree = await inst.create_tree(name="notes")
        async with tree.transaction() as op:
            op.doc("todo").set("milk", {"done": False})
        database_files = sorted(directory.glob(DATABASE_FILE + "*"))
        assert directory / (DATABASE_FILE + "-wal") in database_files  # written, not yet merged
        assert {path.name: mode_of(path) for path in database_files} == {
            path.name: 0o600 for path in database_files
        }
    assert mode_of(directory) == 0o700
    assert mode_of(directory / "device.key") == 0o600
    assert mode_of(directory / DATABASE_FILE) == 0o600


def test_side_files_sqlite_makes_later_take_the_database_mode(tmp_path: Path, umask: int) -> None:
    """The backend relies on SQLite giving -wal, -shm and -journal files the mode of
    the database file; opened in SQLite's default (shared) locking mode it makes all
    three, and each must come out 0600 under a umask that would leave it 0644 or wider."""
    path = tmp_path / "b.db"
    SqliteBackend(path).close()
    seen: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE notes (text TEXT)")
        for suffix in ("-wal", "-shm"):
            seen[suffix] = mode_of(path.with_name(path.name + suffix))
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO notes VALUES ('milk')")  # the journal exists until COMMIT
        seen["-journal"] = mode_of(path.with_name(path.name + "-journal"))
        db.execute("COMMIT")
    assert seen == {"-wal": 0o600, "-shm": 0o600, "-journal": 0o600}


def test_wider_database_files_are_tightened_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    SqliteBackend(path).close()
    wal = path.with_name(path.name + "-wal")
    wal.touch()  # an empty log left behind: SQLite reopens it as it is
    path.chmod(0o644)
    wal.chmod(0o666)
    backend = SqliteBackend(path)
    try:
        assert backend.healthy()
    finally:
        backend.close()
    assert mode_of(path) == 0o600
    [warning] = warnings_from(caplog, "eidetica.storage.sqlite")
    assert "b.db (was 644)" in warning and "b.db-wal (was 666)" in warning


def test_an_owner_only_database_is_opened_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    SqliteBackend(path).close()
    SqliteBackend(path).close()
    assert mode_of(path) == 0o600
    assert warnings_from(caplog, "eidetica.storage.sqlite") == []


async def test_an_existing_open_data_directory_is_tightened_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "node"
    directory.mkdir()
    directory.chmod(0o755)
    async with eidetica.open_instance(directory):
        pass
    assert mode_of(directory) == 0o700
    [warning] = warnings_from(caplog, "eidetica.storage.instance")
    assert str(directory) in warning and "755" in warning and "700" in warning
    caplog.clear()
    async with eidetica.open_instance(directory):
        pass
    assert warnings_from(caplog, "eidetica.storage.instance") == []


@needs_root_and_peercred
async def test_an_open_data_directory_of_another_user_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    """Root must not chmod someone else's folder (``--data /tmp`` would lock out every
    user); it refuses to keep trees there instead."""
    directory = tmp_path / "theirs"
    directory.mkdir()
    directory.chmod(0o755)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=f"belongs to uid {OTHER_UID}"):
        async with eidetica.open_instance(directory):
            pass
    assert mode_of(directory) == 0o755
    assert list(directory.iterdir()) == []


def test_only_the_nodes_own_user_and_root_are_trusted() -> None:
    own = os.geteuid()
    assert control_client.is_trusted(own)
    assert control_client.is_trusted(0)
    strangers = {OTHER_UID, own + 1} - {own, 0}
    assert strangers
    assert not any(control_client.is_trusted(uid) for uid in strangers)


async def test_a_client_of_the_nodes_own_user_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = control.socket_path(tmp_path)
    ran: list[str] = []

    async def answer(command: dict[str, object]) -> control.ControlAnswer:
        ran.append(str(command["command"]))
        return control.ControlAnswer(0, out="served\n")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, path, answer)
            assert mode_of(path) == 0o600
            reply = await control.ask(path, {"command": "id"})
            nursery.cancel_scope.cancel()
    assert reply == control.ControlAnswer(0, out="served\n")
    assert ran == ["id"]
    assert warnings_from(caplog, "eidetica.actors.control") == []


@needs_root_and_peercred
async def test_a_client_of_another_user_is_refused_even_through_a_wide_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The socket is left wide open here (as a mistake would leave it), so uid 65534
    can connect: what stops it is the node's check of who connected."""
    directory = tmp_path / "node"
    directory.mkdir()
    path = control.socket_path(directory)
    ran: list[object] = []

    async def answer(command: dict[str, object]) -> control.ControlAnswer:
        ran.append(command)
        return control.ControlAnswer(0, out="served\n")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, path, answer)
            directory.chmod(0o711)
            path.chmod(0o666)
            child = await trio.run_process(
                [sys.executable, "-I", "-c", _CONNECT_AS_OTHER, str(directory)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    assert child.returncode == 0, child.stderr.decode()
    connected, answered = child.stdout.decode().split("\n", 1)
    assert connected == "connected"
    assert "the node runs as another user" in answered
    assert ran == []
    [warning] = warnings_from(caplog, "eidetica.actors.control")
    assert f"uid {OTHER_UID}" in warning


@needs_root_and_peercred
async def test_a_command_is_not_handed_to_a_node_of_another_user(tmp_path: Path) -> None:
    """A socket in the data directory that another user listens on (a fake node) gets
    no command: ``ask`` checks who listens before it sends anything."""
    directory = tmp_path / "node"
    directory.mkdir()
    listen = [sys.executable, "-I", "-c", _LISTEN_AS_OTHER, str(directory)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:  # cancelling it kills the fake node
            fake: trio.Process = await nursery.start(
                partial(trio.run_process, listen, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
            assert fake.stdout is not None
            said = b""
            while b"\n" not in said:
                chunk = await fake.stdout.receive_some()
                assert chunk, "the fake node ended before it listened"
                said += chunk
            assert said == b"listening\n"
            with pytest.raises(TransportError, match=f"runs as uid {OTHER_UID}"):
                await control.ask(control.socket_path(directory), {"command": "id"})
            nursery.cancel_scope.cancel()
