"""A flood of refusals writes a few lines and a count, not a line each."""

from __future__ import annotations

import logging

import pytest

from eidetica.actors.transports.refusals import BURST, WINDOW, RefusalLog


def test_refusals_past_the_burst_are_folded_into_one_line_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for n in range(5000):
            refusals.warning("caps", "refused %d", n)
        refusals.warning("other kind", "refused something else")
        now[0] = WINDOW
        refusals.warning("caps", "refused again")
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:BURST] == [f"refused {n}" for n in range(BURST)]
    assert lines[BURST:] == [
        "refused something else",
        f"... and {5000 - BURST} more refusals (caps) in {WINDOW:.0f} s",
        "refused again",
    ]
