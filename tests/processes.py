"""Running the ``eidetica`` command as a real process, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMMAND = [sys.executable, "-m", "eidetica.cli"]


def run(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    """``eidetica --data DATA ARGS...`` to its end (a minute at most)."""
    return subprocess.run(
        [*COMMAND, "--data", str(data), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
