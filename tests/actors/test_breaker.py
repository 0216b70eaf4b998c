"""The circuit breaker, with no event loop: time is an argument."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eidetica.actors.engine.breaker import Breaker, BreakerConfig, BreakerState

CONFIG = BreakerConfig(failure_threshold=3, cooldown=60.0)


def test_it_opens_at_the_threshold_and_refuses_until_the_cooldown_ends() -> None:
    breaker = Breaker()
    for now in (1.0, 2.0):
        breaker.failed(now, CONFIG)
        assert breaker.state(now) is BreakerState.CLOSED and not breaker.refuses(now)
    breaker.failed(3.0, CONFIG)
    assert breaker.state(3.0) is BreakerState.OPEN and breaker.refuses(62.9)
    assert breaker.state(63.0) is BreakerState.HALF_OPEN and not breaker.refuses(63.0)


def test_half_open_closes_on_success_and_opens_again_on_failure() -> None:
    breaker = Breaker()
    for now in (0.0, 0.0, 0.0):
        breaker.failed(now, CONFIG)
    breaker.failed(60.0, CONFIG)  # the half-open try failed: another whole cooldown
    assert breaker.refuses(119.0) and breaker.state(120.0) is BreakerState.HALF_OPEN
    breaker.succeeded()
    assert breaker.state(120.0) is BreakerState.CLOSED and breaker.consecutive_failures == 0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1e6)), max_size=40))
def test_it_refuses_only_after_threshold_failures_in_a_row(
    outcomes: list[tuple[bool, float]],
) -> None:
    """Whatever the history, the breaker refuses at ``now`` only if the last
    ``failure_threshold`` outcomes were failures and the last of them was less than a
    cooldown before ``now``; a success always closes it."""
    breaker, streak, last = Breaker(), 0, 0.0
    for ok, now in sorted(outcomes, key=lambda o: o[1]):
        if ok:
            breaker.succeeded()
            streak = 0
        else:
            breaker.failed(now, CONFIG)
            streak, last = streak + 1, now
        if ok:
            assert breaker.state(now) is BreakerState.CLOSED
    opened = streak >= CONFIG.failure_threshold
    assert breaker.refuses(last) == opened
    assert not breaker.refuses(last + CONFIG.cooldown)
