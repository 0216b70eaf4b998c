"""The settings index remembers who may write under given settings tips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from eidetica.errors import PermissionDenied
from eidetica.protocol.auth import check_write
from eidetica.protocol.entry import Entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage.crdt import SetOp
from eidetica.storage.settings import SettingsIndex
from tests.builders import root_entry, settings_on_root

OWNER = SigningKey(bytes(range(32)))
WRITERS = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]
ROOT = root_entry(OWNER)
GRANTS = settings_on_root(
    OWNER, ROOT, [SetOp(("auth", key.public_key), "write") for key in WRITERS]
)
ENTRIES = {entry.id: entry for entry in (ROOT, GRANTS)}
TIPS = (GRANTS.id,)


def lookup(entry_id: str) -> Entry:
    return ENTRIES[entry_id]


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The authors whose permission the index checks against the settings."""
    checked: list[str] = []

    def counting(settings: Mapping[str, Any], author: str, *, changes_settings: bool) -> None:
        checked.append(author)
        check_write(settings, author, changes_settings=changes_settings)

    monkeypatch.setattr("eidetica.storage.settings.check_write", counting)
    return checked


def test_an_allowed_writer_is_checked_once_per_settings_tips(checks: list[str]) -> None:
    index = SettingsIndex()
    writer = WRITERS[0].public_key
    for _ in range(3):
        state = index.check_write(TIPS, writer, changes_settings=False, lookup=lookup)
        assert state["auth"][writer] == "write"
    assert checks == [writer]
    # other tips, or a settings change, are another question
    index.check_write((ROOT.id,), OWNER.public_key, changes_settings=False, lookup=lookup)
    with pytest.raises(PermissionDenied, match="needs admin, has write"):
        index.check_write(TIPS, writer, changes_settings=True, lookup=lookup)
    assert checks == [writer, OWNER.public_key, writer]


def test_a_refused_writer_is_refused_every_time(checks: list[str]) -> None:
    index = SettingsIndex()
    stranger = SigningKey(bytes([9]) * 32).public_key
    for _ in range(2):
        with pytest.raises(PermissionDenied, match="has no permission"):
            index.check_write(TIPS, stranger, changes_settings=False, lookup=lookup)
    # a writer allowed under the grants is no writer under the root alone
    index.check_write(TIPS, WRITERS[0].public_key, changes_settings=False, lookup=lookup)
    with pytest.raises(PermissionDenied):
        index.check_write((ROOT.id,), WRITERS[0].public_key, changes_settings=False, lookup=lookup)
    assert checks == [stranger, stranger, WRITERS[0].public_key, WRITERS[0].public_key]


def test_the_writers_remembered_are_bounded(checks: list[str]) -> None:
    index = SettingsIndex(max_writers=2)
    for key in [*WRITERS, *WRITERS]:
        index.check_write(TIPS, key.public_key, changes_settings=False, lookup=lookup)
    # the oldest is forgotten as each new one comes, so every check runs again
    assert checks == [key.public_key for key in [*WRITERS, *WRITERS]]
    index.check_write(TIPS, WRITERS[2].public_key, changes_settings=False, lookup=lookup)
    assert len(checks) == 2 * len(WRITERS)
