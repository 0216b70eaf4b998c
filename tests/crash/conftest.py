"""The seed each crash test draws its kill moments from: printed with any failure, and
given back by ``EIDETICA_CRASH_SEED=N`` to run the same kills again."""

from __future__ import annotations

import os
import random
from collections.abc import Generator, Iterator

import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> Iterator[random.Random]:
    seed = int(os.environ.get("EIDETICA_CRASH_SEED") or random.SystemRandom().getrandbits(32))
    request.node.crash_seed = seed
    yield random.Random(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seed = getattr(item, "crash_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("crash seed", f"run again with EIDETICA_CRASH_SEED={seed}"))
    return report
