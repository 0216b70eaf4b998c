"""The live status page in a real browser: Debian's chromium, driven by playwright.

Two ``eidetica serve`` processes (real SQLite, real hypercorn on 127.0.0.1) sync a
tree; the page of the one that dialled must show its peer, the tree and a finished
sync, and must update by itself, without a reload, once a second commit reaches it.
A screenshot is saved in ``tests/artifacts/`` (ignored by git) for a person to look at.

Chromium is Debian's (``.ci/run`` installs it with apt-get); playwright is pointed
at it and never downloads a browser. Without it the test fails in CI and is skipped
elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.test_serve_processes import cli, shared_tree, start, stop

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MARKUP = "<img src=x onerror=\"document.title='owned'\">"
"""Hostile text, as a peer could put in an error or an address."""


def _need_browser() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"no chromium at {CHROMIUM}: install it with 'apt-get install -y chromium'"
    else:
        try:
            import playwright.sync_api  # noqa: F401, PLC0415 -- only this test needs it
        except ImportError:
            problem = "playwright is not installed: pip install -e '.[dev]'"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the status page test needs a browser: {problem}")
    pytest.skip(f"{problem} (CI would fail here)")


def test_status_page_shows_peer_tree_and_syncs_and_updates_live(tmp_path: Path) -> None:
    _need_browser()
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    a_data, b_data = tmp_path / "a", tmp_path / "b"
    tree = shared_tree(a_data, b_data, "write")
    a, a_said = start(a_data, "--listen", "http://127.0.0.1:0")
    try:
        b, b_said = start(
            b_data, "--listen", "http://127.0.0.1:0", "--peer", a_said["listening"], "--sync", tree
        )
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    errors: list[str] = []
                    page.on("pageerror", lambda error: errors.append(str(error)))
                    page.goto(b_said["listening"] + "/")
                    expect(page.get_by_test_id("key")).to_have_text(b_said["key"])
                    peer_row = page.locator(f'tr[data-peer="{a_said["key"]}"]')
                    expect(peer_row).to_contain_text("up", timeout=15_000)
                    tree_row = page.locator(f'tr[data-tree="{tree}"]')
                    expect(tree_row.get_by_test_id("entries")).to_have_text("3", timeout=15_000)
                    expect(tree_row).to_contain_text("in step")
                    finished = page.locator('#recent tr[data-outcome="complete"]')
                    expect(finished.first).to_be_visible(timeout=15_000)
                    updates = int(page.get_by_test_id("state").get_attribute("data-updates") or 0)

                    cli(a_data, "put", tree, "todo", "eggs", "true")  # reaches b by its watch
                    expect(tree_row.get_by_test_id("entries")).to_have_text("4", timeout=15_000)
                    shown = int(page.get_by_test_id("state").get_attribute("data-updates") or 0)
                    assert shown > updates, "the page did not poll again"
                    assert page.title() == "eidetica node"
                    assert errors == []
                    ARTIFACTS.mkdir(exist_ok=True)
                    shot = ARTIFACTS / "status_page.png"
                    page.screenshot(path=str(shot), full_page=True)
                    assert shot.stat().st_size > 0
                    _shows_hostile_text_as_text(page)
                finally:
                    browser.close()
        finally:
            stop(b)
    finally:
        stop(a)


def _shows_hostile_text_as_text(page: Page) -> None:
    """Render a snapshot whose peer-supplied strings are markup: they appear as text,
    and nothing of them runs or becomes an element."""
    hostile = {
        "key": MARKUP,
        "now": 0,
        "engine": MARKUP,
        "status": {
            "servers": [{"address": MARKUP, "listening": True}],
            "peers": {
                MARKUP: {
                    "key": MARKUP,
                    "state": MARKUP,
                    "address": MARKUP,
                    "dial": None,
                    "trees_last_synced": {},
                    "syncs": 0,
                    "failures": 1,
                    "breaker": MARKUP,
                    "last_error": MARKUP,
                }
            },
            "trees": {},
            "syncing": [
                {"peer": MARKUP, "tree": MARKUP, "entries": 1, "bytes": 2, "expected": None}
            ],
        },
        "recent": [{"event": "sync_failed", "peer": MARKUP, "tree": MARKUP, "error": MARKUP}],
    }
    page.evaluate("snapshot => render(snapshot)", hostile)
    assert page.locator("img").count() == 0
    assert MARKUP in page.get_by_test_id("peers").inner_text()
    assert MARKUP[:20] in page.get_by_test_id("syncing").inner_text()
    assert page.title() == "eidetica node"
