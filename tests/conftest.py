"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import eidetica
from eidetica.storage.backend import Backend
from eidetica.storage.memory import MemoryBackend
from eidetica.storage.sqlite import SqliteBackend


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn, so one suite holds both to the same contract."""
    store: Backend = (
        MemoryBackend() if request.param == "memory" else SqliteBackend(tmp_path / "backend.db")
    )
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite"])
def instance_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    """Where to open an instance: None (in memory) or a fresh SQLite directory."""
    return None if request.param == "memory" else tmp_path / "node"


@pytest.fixture
async def inst(instance_path: Path | None) -> AsyncIterator[eidetica.Instance]:
    async with eidetica.open_instance(instance_path) as instance:
        yield instance
