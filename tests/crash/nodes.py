"""Real ``eidetica serve`` processes to kill, a writer that records what the node
acknowledged, and the checks made on a node after it was killed.

The writer speaks to the node's control socket exactly as the ``eidetica`` command
does (:func:`eidetica.actors.control_client.ask` with the parsed arguments): a commit
is acknowledged when the node answers exit code 0, which is when ``eidetica put``
would exit 0.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eidetica.actors import control_client
from eidetica.cli import _GLOBAL_FLAGS, _parser
from eidetica.errors import TransportError

ROOT = Path(__file__).resolve().parents[2]
"""This checkout: the code the ``serve`` processes run."""

COMMAND = [sys.executable, "-m", "eidetica.cli"]

KILLS = int(os.environ.get("EIDETICA_CRASH_KILLS", "20"))
"""Kills over a whole run of this folder: a quick run by default, the long one with
``EIDETICA_CRASH_KILLS=100``."""

QUICK_TIMERS = ("--periodic-sync", "1", "--connection-check", "1", "--retry-sweep", "1")
"""Timers short enough that killed nodes find each other again in a few seconds."""

CONVERGE_SECONDS = 30.0
"""How long two restarted nodes may take to hold the same again by themselves: many
times the timers above, to leave room for a busy machine."""


def kills(share: float) -> int:
    """This test's part of :data:`KILLS`: at least one kill."""
    return max(1, round(KILLS * share))


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(data: Path, *args: str) -> str:
    """``eidetica --data DATA ARGS...`` as a process, which must succeed; its output."""
    result = subprocess.run(
        [*COMMAND, "--data", str(data), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert result.returncode == 0, f"eidetica {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def command(*args: str) -> dict[str, Any]:
    """What the ``eidetica ARGS...`` command sends to a running node."""
    parsed = vars(_parser().parse_args(list(args)))
    return {key: value for key, value in parsed.items() if key not in _GLOBAL_FLAGS}


def ask(data: Path, *args: str) -> control_client.ControlAnswer | None:
    """Have the node on ``data`` run ``eidetica ARGS...``; None if no node answered
    (none runs, or it died before it answered)."""
    try:
        return control_client.ask(control_client.socket_path(data), command(*args))
    except (TransportError, OSError):
        return None


def read(data: Path, tree: str, store: str) -> Any:
    """A store's whole document, read by the node running on ``data``."""
    answer = ask(data, "get", tree, store)
    assert answer is not None and answer.code == 0, answer
    return json.loads(answer.out)


def wait_until(holds: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``holds`` (another process's state: nothing here to wait on) until it is
    true; how long that took. Fails after ``seconds``."""
    began = time.monotonic()
    while not holds():
        assert time.monotonic() - began < seconds, f"not within {seconds} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - began


def integrity(data: Path, scratch: Path) -> list[str]:
    """``PRAGMA integrity_check`` of a stopped node's database, as its files are (the
    WAL included), run on a copy so the node does its own recovery when it restarts."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in ("eidetica.db", "eidetica.db-wal"):
        if (data / name).exists():
            shutil.copyfile(data / name, scratch / name)
    db = sqlite3.connect(scratch / "eidetica.db")
    try:
        return [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
    finally:
        db.close()


def entries_in(copy: Path) -> int:
    """How many entries the database :func:`integrity` copied to ``copy`` holds."""
    db = sqlite3.connect(copy / "eidetica.db")
    try:
        count: int = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        return count
    finally:
        db.close()


def tips(data: Path, tree: str) -> list[str] | None:
    """The tree's tips on the node running on ``data``; None while it does not hold
    the tree (or does not answer)."""
    answer = ask(data, "tree", "show", tree)
    if answer is None or answer.code != 0:
        return None
    shown: list[str] = sorted(json.loads(answer.out)["tips"])
    return shown


class Serve:
    """One data directory and the ``eidetica serve`` process running on it, if any.
    Its log (every run's) goes to ``DATA.log``, beside the directory."""

    def __init__(self, data: Path, *flags: str) -> None:
        self.data = data
        self.flags = list(flags)
        self.log = data.with_name(data.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.said: dict[str, str] = {}

    def start(self, *flags: str, seconds: float = 30) -> dict[str, str]:
        """Start ``serve`` with this node's flags and ``flags``; what it said before
        'ready' (``listening``, ``key``)."""
        assert self.process is None, "already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*COMMAND, "--data", str(self.data), "serve", *self.flags, *flags],
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment(),
            )
        assert self.process.stdout is not None
        said: dict[str, str] = {}
        pending = b""
        began = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                left = seconds - (time.monotonic() - began)
                assert left > 0, f"{self.data.name} not ready within {seconds} s"
                if not selector.select(left):
                    continue
                chunk = os.read(self.process.stdout.fileno(), 4096)
                assert chunk, f"{self.data.name} stopped early: {self.tail()}"
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    word, _, rest = line.decode().strip().partition(" ")
                    if word == "ready":
                        self.said = said
                        return said
                    said[word] = rest

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no cleanup."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._closed()

    def stop(self) -> None:
        """SIGTERM, which must end in a clean exit 0."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._closed()
        assert code == 0, f"{self.data.name} stopped with {code}: {self.tail()}"

    def close(self) -> None:
        """Kill the process if it still runs: for ``finally``."""
        if self.process is not None and self.process.poll() is None:
            self.kill()
        elif self.process is not None:
            self._closed()

    def _closed(self) -> None:
        assert self.process is not None
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


class Writer(threading.Thread):
    """Commits ``store.PREFIX-N = N`` for N = 0, 1, ... through the node on ``data``
    until the node stops answering (or :meth:`finish`), recording each one the node
    acknowledged. A commit cut off by the kill is not acknowledged: it may be there
    after the restart or not."""

    def __init__(self, data: Path, tree: str, store: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.data, self.tree, self.store, self.prefix = data, tree, store, prefix
        self.acknowledged: dict[str, int] = {}
        self.refused: list[str] = []
        self._finish = threading.Event()

    def run(self) -> None:
        count = 0
        while not self._finish.is_set():
            key = f"{self.prefix}-{count}"
            answer = ask(self.data, "put", self.tree, self.store, key, str(count))
            if answer is None:
                return
            if answer.code == 0:
                self.acknowledged[key] = count
            else:
                self.refused.append(answer.err)
            count += 1

    def finish(self) -> None:
        self._finish.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the writer hangs on a node that does not answer"


def lost(acknowledged: dict[str, int], document: Any) -> dict[str, int]:
    """The acknowledged commits ``document`` does not hold."""
    return {key: value for key, value in acknowledged.items() if document.get(key) != value}


def kept(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether everything ``before`` held is in ``after`` unchanged (keys are never
    overwritten here, so a later read holds more, never other)."""
    return all(key in after and after[key] == value for key, value in before.items())


def summary(figures: Sequence[float]) -> str:
    ordered = sorted(figures)
    if not ordered:
        return "none"
    middle = ordered[len(ordered) // 2]
    return f"min {ordered[0]:.2f} s, median {middle:.2f} s, max {ordered[-1]:.2f} s"
