"""Token buckets: a burst at once, the rate after it, and a bounded table of keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.protocol.ratelimit import TokenBuckets

T0 = 1_700_000_000.0


def allowed(buckets: TokenBuckets, key: str, now: float, tries: int) -> int:
    return sum(buckets.allow(key, now) for _ in range(tries))


def test_a_key_gets_its_burst_at_once_then_the_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=4.0)
    assert allowed(buckets, "a", T0, 10) == 4
    assert allowed(buckets, "a", T0 + 0.25, 10) == 0
    assert allowed(buckets, "a", T0 + 0.5, 10) == 1
    assert allowed(buckets, "a", T0 + 1.5, 10) == 2
    assert sum(allowed(buckets, "a", T0 + 1.5 + second, 10) for second in range(1, 11)) == 20


def test_a_bucket_refills_no_further_than_its_burst() -> None:
    buckets = TokenBuckets(rate=2.0, burst=4.0)
    assert allowed(buckets, "a", T0, 4) == 4
    assert allowed(buckets, "a", T0 + 3600, 10) == 4


def test_refused_attempts_spend_nothing() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0)
    assert buckets.allow("a", T0)
    for tenth in range(1, 10):
        assert not buckets.allow("a", T0 + tenth / 10)
    assert buckets.allow("a", T0 + 1)


def test_a_costly_action_needs_that_many_tokens() -> None:
    buckets = TokenBuckets(rate=1.0, burst=4.0)
    assert buckets.allow("a", T0, cost=3)
    assert not buckets.allow("a", T0, cost=3)
    assert buckets.allow("a", T0, cost=1)
    assert not buckets.allow("b", T0, cost=5)
    with pytest.raises(ValueError, match="negative"):
        buckets.allow("a", T0, cost=-1)


def test_keys_have_buckets_of_their_own() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2.0)
    assert allowed(buckets, "flooder", T0, 100) == 2
    assert allowed(buckets, "honest", T0, 2) == 2


def test_a_clock_that_steps_back_refills_nothing() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0)
    assert buckets.allow("a", T0 + 10)
    assert not buckets.allow("a", T0)
    assert not buckets.allow("a", T0 + 10.5)
    assert buckets.allow("a", T0 + 11)


def test_100000_distinct_keys_stay_within_the_bound() -> None:
    buckets = TokenBuckets(rate=1.0, burst=5.0, max_keys=4096)
    for number in range(100_000):
        assert buckets.allow(f"10.{number // 65536}.{number // 256 % 256}.{number % 256}", T0)
        assert len(buckets) <= 4096
    assert len(buckets) == 4096


def test_refilled_buckets_are_dropped_before_any_other() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_keys=3)
    assert buckets.allow("a", T0)
    assert buckets.allow("b", T0 + 0.5)
    assert buckets.allow("c", T0 + 0.75)
    assert buckets.allow("d", T0 + 1.0)  # a has refilled: it goes, not b or c
    assert len(buckets) == 3
    assert not buckets.allow("b", T0 + 1.0)
    assert not buckets.allow("c", T0 + 1.0)


def test_idle_keys_leave_the_table_by_themselves() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2.0)
    for number in range(1000):
        buckets.allow(f"key{number}", T0)
    assert len(buckets) == 1000
    buckets.allow("late", T0 + 0.5)
    assert len(buckets) == 1001
    buckets.allow("later", T0 + 2)
    assert len(buckets) == 1


def test_a_full_table_forgets_its_least_recently_used_key() -> None:
    """The price of the bound: a forgotten key starts again with a full bucket, which
    is what any new key gets."""
    buckets = TokenBuckets(rate=0.001, burst=1.0, max_keys=2)
    assert buckets.allow("a", T0)
    assert buckets.allow("b", T0)
    assert not buckets.allow("a", T0 + 1)
    assert buckets.allow("c", T0 + 1)
    assert not buckets.allow("a", T0 + 1)  # still known
    assert buckets.allow("b", T0 + 1)  # forgotten, so full again


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"), [(0.0, 1.0, 1), (1.0, 0.0, 1), (1.0, 1.0, 0), (-1.0, 1.0, 1)]
)
def test_bounds_that_allow_nothing_are_refused(rate: float, burst: float, max_keys: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBuckets(rate=rate, burst=burst, max_keys=max_keys)


class ModelBucket:
    """The textbook token bucket, for one key, with nothing forgotten."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.updated = rate, burst, burst, now

    def allow(self, now: float, cost: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


_calls = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from([0.0, 0.0, 0.1, 0.25, 1.0, 3.0]),
        st.sampled_from([1.0, 1.0, 0.5, 2.0]),
    ),
    max_size=80,
)


@given(
    calls=_calls,
    rate=st.sampled_from([0.5, 1.0, 4.0]),
    burst=st.sampled_from([1.0, 2.0, 5.0]),
    max_keys=st.integers(1, 8),
)
@settings(deadline=None)
def test_buckets_behave_as_the_textbook_model_while_the_table_has_room(
    calls: list[tuple[int, float, float]], rate: float, burst: float, max_keys: int
) -> None:
    """With room for every key (six keys here), the table is the textbook bucket per key:
    dropping a refilled bucket loses nothing. With less room, it still stays in bounds."""
    buckets = TokenBuckets(rate=rate, burst=burst, max_keys=max_keys)
    models: dict[int, ModelBucket] = {}
    now = T0
    for key, advance, cost in calls:
        now += advance
        model = models.setdefault(key, ModelBucket(rate, burst, now))
        expected = model.allow(now, cost)
        got = buckets.allow(f"key{key}", now, cost)
        if max_keys >= 6:
            assert got == expected
        assert len(buckets) <= max_keys
