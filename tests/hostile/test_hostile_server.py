"""A hostile WebSocket server must not crash the node that dials it: neither a one-off
``eidetica sync`` nor a ``serve`` that dials (and redials) it as a peer."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.hostile.attacks import hostile_server
from tests.hostile.node import check_honest, run_command, serving

REDIAL_SECONDS = 20
"""Time for a node to dial the hostile server again (redials start after 1 s)."""


@pytest.mark.parametrize(
    "behaviour",
    [
        "not-utf8",
        "deep",
        "answer-then-reset",
        "pings-then-reset",
        "half-then-reset",
        "proven-then-garbage",
    ],
)
async def test_sync_with_a_hostile_server_fails_in_one_line(tmp_path: Path, behaviour: str) -> None:
    assert (await run_command("init", data=tmp_path / "b")).returncode == 0
    async with hostile_server(behaviour) as hostile:
        result = await run_command(
            "--log-level", "error", "sync", "f" * 64, "--peer", hostile.address, data=tmp_path / "b"
        )
    stderr = result.stderr.decode(errors="replace")
    assert hostile.connections >= 1
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("eidetica:"), stderr


async def test_serve_dialling_hostile_servers_keeps_running(tmp_path: Path) -> None:
    """The node dials five hostile servers as peers when it starts; the one that
    proves its key is dialled again once its link drops, and meets garbage again."""
    async with (
        hostile_server("not-utf8") as not_utf8,
        hostile_server("deep") as deep,
        hostile_server("answer-then-reset") as answer_then_reset,
        hostile_server("pings-then-reset") as pings_then_reset,
        hostile_server("proven-then-garbage") as proven,
    ):
        servers = (not_utf8, deep, answer_then_reset, pings_then_reset, proven)
        peers = [flag for server in servers for flag in ("--peer", server.address)]
        async with serving(tmp_path, *peers, "--sync", "f" * 64) as node:
            with trio.fail_after(REDIAL_SECONDS):
                await proven.dialled(2)
            await check_honest(node, process=True)
            assert all(server.connections >= 1 for server in servers)
