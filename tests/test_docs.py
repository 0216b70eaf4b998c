"""The guides' examples, run as written: a doc that says it works must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eidetica.actors.config import SyncConfig
from eidetica.actors.transports.admission import ServerLimits
from eidetica.cli import SETTINGS

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples(doc: str) -> list[tuple[str, str]]:
    """Each Python block of ``docs/<doc>``, named by the heading above it."""
    text = (ROOT / "docs" / doc).read_text()
    found = []
    for match in BLOCK.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        found.append((f"{doc}: {headings[-1] if headings else 'top'}", match.group(1)))
    return found


GUIDE = examples("guide.md")


@pytest.mark.parametrize("code", [code for _, code in GUIDE], ids=[name for name, _ in GUIDE])
def test_a_guide_example_runs_as_written(code: str, tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "every example prints what it shows"


def test_the_guide_has_an_example_for_each_way_in() -> None:
    names = " ".join(name for name, _ in GUIDE)
    for part in ("trio", "events", "asyncio", "plain Python", "hub"):
        assert part in names


def _reference() -> dict[str, str]:
    """The configuration reference of ``docs/operations.md``: setting -> default."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("<!-- settings:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| .+ \| (.+) \|$", table, re.MULTILINE)
    return dict(rows)


def test_the_configuration_reference_lists_every_setting_with_its_default() -> None:
    reference = _reference()
    assert sorted(reference) == sorted(SETTINGS)
    defaults = {**vars(SyncConfig()), **vars(ServerLimits())}
    for name, documented in reference.items():
        default = defaults.get(name)
        if isinstance(default, str):
            assert documented == f"`{default}`", f"{name}: the docs say {documented}"
        elif default is not None:
            number = float(documented.split()[0])
            assert number == default, f"{name}: the docs say {documented}"
