"""``eidetica sync`` shows its progress: plain lines in a log or pipe, a live bar on a
terminal. Real processes: a ``serve`` holding a tree of several pages, and ``sync``."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import trio

import eidetica
from tests.integration.test_serve_processes import cli, start, stop
from tests.processes import COMMAND

ENTRIES = 2_500
"""Commits in the served tree: three pages of at most 1,024."""


async def _filled(data: Path, reader: Path) -> str:
    """A node at ``data`` with a tree of ``ENTRIES`` commits the node at ``reader``
    may read; the tree's id."""
    async with eidetica.open_instance(data) as inst, eidetica.open_instance(reader) as other:
        tree = await inst.create_tree(name="big")
        await tree.grant(other.public_key, "read")
        for n in range(ENTRIES):
            async with tree.transaction() as op:
                op.doc("log").set(f"n{n}", n)
        return tree.root_id


def _served(tmp_path: Path) -> tuple[subprocess.Popen[str], str, str]:
    tree = trio.run(_filled, tmp_path / "a", tmp_path / "b")
    server, said = start(tmp_path / "a", "--listen", "ws://127.0.0.1:0")
    return server, said["listening"], tree


def test_sync_into_a_pipe_prints_progress_lines_with_the_total(tmp_path: Path) -> None:
    server, address, tree = _served(tmp_path)
    try:
        done = subprocess.run(
            [*COMMAND, "--data", str(tmp_path / "b"), "sync", tree, "--peer", address],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        stop(server)
    assert done.returncode == 0, done.stderr
    total = ENTRIES + 2  # the root and the grant
    lines = [line for line in done.stderr.splitlines() if line.startswith("received")]
    assert lines[0].startswith(f"received 1,024 of {total:,} entries (")
    assert lines[-1].startswith(f"received {total:,} entries (") and lines[-1].endswith(" s")
    assert cli(tmp_path / "b", "get", tree, "log", "n2499") == "2499"


def test_sync_on_a_terminal_draws_a_bar(tmp_path: Path) -> None:
    server, address, tree = _served(tmp_path)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*COMMAND, "--data", str(tmp_path / "b"), "sync", tree, "--peer", address],
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            drawn += chunk
        assert process.wait(timeout=120) == 0
    finally:
        os.close(leader)
        stop(server)
    total = ENTRIES + 2
    assert f"{total}/{total}".encode() in drawn  # the bar's count, complete
    assert b"\x1b[" in drawn  # drawn with terminal controls, not plain lines
