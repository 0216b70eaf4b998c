"""Real ``eidetica serve`` processes to attack, and the checks every attack ends with.

:func:`serving` seeds a data directory (one tree, one document, a write grant for an
honest key), starts ``eidetica serve`` on it listening on WebSocket and HTTP at
127.0.0.1 and yields a :class:`Node`. Leaving the block stops the node with SIGTERM
and asserts a clean exit (0, no traceback), then opens the directory and asserts that
the tree holds exactly the entries it should: no attack stored anything.

:func:`check_honest` is what every test ends with: the node still runs, an honest
second node (a real ``eidetica sync`` process, or the same steps in this process)
handshakes from 127.0.0.1 and pulls the tree from it, the node's tips are unchanged,
and its resident memory has stayed under the bound.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import eidetica
from eidetica.actors import control
from eidetica.actors.state import SYNC_TREE_KEY
from eidetica.protocol.keys import SigningKey
from eidetica.storage.device import KEY_FILE
from tests.processes import COMMAND

NODE_RSS_BOUND = 340 * 1024 * 1024
"""Peak resident memory an attacked node may reach, in bytes: docs/security.md's
worst-case formula with the default limits and two listeners, about 339 MiB (base 52,
2.5 x the 64 MiB byte budget, 1,024 connections at 36 KiB, holding area 64, tables
13.4 per listener since protocol version 2 keeps an ephemeral key per pending
handshake and a key per session, as `python -m bench hostile` measured them)."""

DOCUMENT = {"milk": {"done": False}}
"""What the seeded tree's ``todo`` document holds, and an honest peer must pull."""

STORE = "todo"
START_SECONDS = 30
STOP_SECONDS = 30
COMMAND_SECONDS = 60


@dataclass
class Node:
    """One running ``eidetica serve`` process and what it was seeded with."""

    data: Path
    process: trio.Process
    stderr: Path
    ws: str
    """Its WebSocket address, ``ws://127.0.0.1:PORT``."""
    http: str
    """Its HTTP address, ``http://127.0.0.1:PORT``."""
    key: str
    """Its public key."""
    tree: str
    """The seeded tree's id."""
    honest: SigningKey
    """A key the seeded tree grants write to: the honest peer's."""
    tips: list[str]
    """The tree's tips the node must still have after an attack."""
    entries: set[str] = field(default_factory=set)
    """The tree's entries the node must hold when it stops, and no others."""
    document: dict[str, Any] = field(default_factory=lambda: dict(DOCUMENT))
    """What the tree's ``todo`` document must hold for an honest peer that pulls it."""

    def address(self, transport: str) -> str:
        """Its address for ``ws`` or ``http``."""
        return {"ws": self.ws, "http": self.http}[transport]

    def port(self, transport: str) -> int:
        return int(self.address(transport).rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def memory(self, field_name: str = "VmRSS") -> int:
        """A memory figure of the process, in bytes: ``VmRSS`` now, ``VmHWM`` at peak."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field_name:
                number, unit = value.split()
                assert unit == "kB", line
                return int(number) * 1024
        raise AssertionError(f"no {field_name} in /proc/{self.process.pid}/status")

    def descriptors(self) -> int:
        """How many file descriptors the process holds open now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        """What the node wrote to stderr so far."""
        return self.stderr.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def write_key(directory: Path, key: SigningKey) -> None:
    """Make ``directory`` a data directory whose device key is ``key``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    path.write_text(key.seed.hex() + "\n")
    path.chmod(0o600)


async def _seed(data: Path, honest: SigningKey, anyone: str | None) -> tuple[str, list[str]]:
    """A tree with one document that ``honest`` may write (and, with ``anyone``, that
    every key may read or write); its id and entries."""
    async with eidetica.open_instance(data) as inst:
        tree = await inst.create_tree(name="shared")
        async with tree.transaction() as op:
            op.doc(STORE).set("milk", DOCUMENT["milk"])
        await tree.grant(honest.public_key, "write")
        if anyone is not None:
            await tree.grant("*", anyone)
        return tree.root_id, [entry.id for entry in await tree.entries()]


async def _read_until_ready(process: trio.Process, stderr: Path) -> dict[str, list[str]]:
    """What ``serve`` printed before ``ready``, word by word."""
    assert process.stdout is not None
    buffer = b""
    said: dict[str, list[str]] = {}
    while True:
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            if not chunk:
                await process.wait()
                raise AssertionError(
                    f"serve stopped before it was ready ({process.returncode}):\n"
                    + (await trio.Path(stderr).read_text(errors="replace"))[-3000:]
                )
            buffer += chunk
        line, _, buffer = buffer.partition(b"\n")
        word, _, rest = line.decode().strip().partition(" ")
        if word == "ready":
            return said
        said.setdefault(word, []).append(rest)


@asynccontextmanager
async def serving(directory: Path, *flags: str, anyone: str | None = None) -> AsyncIterator[Node]:
    """An ``eidetica serve`` process on a fresh data directory in ``directory``,
    listening on ws and http at 127.0.0.1, with ``flags`` added; see the module."""
    data = directory / "node"
    honest = SigningKey.generate()
    tree, entries = await _seed(data, honest, anyone)
    stderr_path = directory / "node.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [
                *COMMAND,
                "--data",
                str(data),
                "serve",
                "--listen",
                "ws://127.0.0.1:0",
                "--listen",
                "http://127.0.0.1:0",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        with trio.fail_after(START_SECONDS):
            said = await _read_until_ready(process, stderr_path)
        listening = said.get("listening", [])
        ws = next(address for address in listening if address.startswith("ws://"))
        http = next(address for address in listening if address.startswith("http://"))
        node = Node(data, process, stderr_path, ws, http, said["key"][0], tree, honest, [])
        node.tips = await tips(node)
        node.entries = set(entries)
        yield node
        await _stop(node)
    finally:
        await _kill(process)
    await _check_at_rest(node)


async def _stop(node: Node) -> None:
    """SIGTERM; the node must exit 0 within the bound, with no traceback logged."""
    assert node.alive(), f"the node had exited ({node.process.returncode}):\n{node.log_tail()}"
    node.process.send_signal(signal.SIGTERM)
    with trio.fail_after(STOP_SECONDS):
        code = await node.process.wait()
    log = node.log()
    assert code == 0, f"serve exited {code}:\n{node.log_tail()}"
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:6000]


async def _kill(process: trio.Process) -> None:
    """Make sure the process is gone (after a failure: no clean stop is asked for)."""
    if process.poll() is None:
        process.kill()
        with trio.move_on_after(STOP_SECONDS):
            await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


async def _check_at_rest(node: Node) -> None:
    """The stopped node's directory holds the seeded tree with exactly ``node.entries``
    and no tree besides it and the node's own sync tree."""
    async with eidetica.open_instance(node.data) as inst:
        own = inst.backend.get_local(SYNC_TREE_KEY)
        trees = {tree.root_id for tree in await inst.trees()} - {own}
        assert trees == {node.tree}
        tree = await inst.open_tree(node.tree)
        assert {entry.id for entry in await tree.entries()} == node.entries
        assert sorted(await tree.tips()) == sorted(node.tips)


async def ask(node: Node, **command: Any) -> control.ControlAnswer:
    """Have the running node run a command through its control socket, as the
    ``eidetica`` command does when a node holds the directory."""
    with trio.fail_after(COMMAND_SECONDS):
        answer = await control.ask(control.socket_path(node.data), command)
    assert answer is not None, "no node answers on the control socket"
    return answer


async def tips(node: Node) -> list[str]:
    """The running node's tips of its tree, as ``eidetica tree show`` prints them."""
    answer = await ask(node, command="tree", tree_command="show", tree=node.tree)
    assert answer.code == 0, answer.err
    shown: list[str] = json.loads(answer.out)["tips"]
    return sorted(shown)


_honest_runs = itertools.count(1)


async def run_command(*args: str, data: Path) -> subprocess.CompletedProcess[bytes]:
    """``eidetica --data DATA ARGS...`` as a process, to its end (bounded)."""
    with trio.fail_after(COMMAND_SECONDS):
        return await trio.run_process(
            [*COMMAND, "--data", str(data), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def check_honest(
    node: Node,
    transports: Sequence[str] = ("ws",),
    *,
    process: bool = False,
    rss_bound: int = NODE_RSS_BOUND,
) -> None:
    """After an attack: the node still runs; over each of ``transports``, an honest
    node (a fresh directory with the granted key) pulls the tree and holds the
    document and the node's tips; the node's tips are unchanged; and its memory never
    went past ``rss_bound`` (peak resident set).

    With ``process``, the honest node is a real ``eidetica sync`` process; otherwise it
    runs in this process, doing what that command does (connect, relate the tree,
    sync once), which spares a second of interpreter start per check."""
    assert node.alive(), f"the node exited ({node.process.returncode}):\n{node.log_tail()}"
    for transport in transports:
        honest = node.data.parent / f"honest-{next(_honest_runs)}"
        write_key(honest, node.honest)
        address = node.address(transport)
        if process:
            result = await run_command("sync", node.tree, "--peer", address, data=honest)
            stderr = result.stderr.decode(errors="replace")
            assert result.returncode == 0, f"honest sync over {transport} failed: {stderr}"
            assert result.stdout.decode().strip() == f"synced {node.tree} with {node.key}"
        else:
            await _sync_in_process(honest, node.tree, address, node.key)
        async with eidetica.open_instance(honest) as inst:
            tree = await inst.open_tree(node.tree)
            assert (await tree.doc(STORE)).to_dict() == node.document
            assert sorted(await tree.tips()) == node.tips
    assert await tips(node) == node.tips
    assert node.alive(), f"the node exited ({node.process.returncode}):\n{node.log_tail()}"
    peak = node.memory("VmHWM")
    assert peak < rss_bound, f"peak RSS {peak / 2**20:.0f} MiB, over {rss_bound / 2**20:.0f} MiB"


async def _sync_in_process(data: Path, tree: str, address: str, key: str) -> None:
    """What ``eidetica --data DATA sync TREE --peer ADDRESS`` does, in this process."""
    with trio.fail_after(COMMAND_SECONDS):
        async with eidetica.open_instance(data) as inst, inst.sync() as sync:
            peer = await sync.connect(address)
            assert peer == key
            await sync.add_tree_sync(peer, tree)
            await sync.sync_with_peer(peer)
