"""Token buckets, one per key, in a bounded table: how often a source or a connection
may do something, such as start a handshake.

Each key has a bucket of up to ``burst`` tokens that refills at ``rate`` tokens a
second; an action that costs ``cost`` is allowed if the bucket holds that many, which it
then spends. So a key may act ``burst`` times at once and ``rate`` times a second after
that; a refused action spends nothing, so a key that keeps trying is let through again
as soon as its bucket refills.

The table of buckets is bounded by ``max_keys``, so a flood of distinct keys cannot
grow memory. A bucket that has refilled is the same as no bucket, so those are dropped
first: on every call, from the least recently used end, where they mostly are.
When the table is still full and a new key comes, the least recently used bucket goes.
A key forgotten that way starts again with a full bucket; that is no more than any new
key gets, so the bound gives a flooder nothing it could not have by using a new key.

Like the rest of ``protocol/`` this is sans-IO: time comes in as ``now`` (seconds, from
any clock that does not go back; if it does, buckets just refill later).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 4096
"""Buckets a table holds at most."""


@dataclass(slots=True)
class _Bucket:
    """The tokens a key had at its last call, and when that was."""

    tokens: float
    updated: float


class TokenBuckets:
    """A token bucket per key, ``rate`` tokens a second up to ``burst``, for at most
    ``max_keys`` keys at once. See the module's docstring for how the bound is kept."""

    def __init__(self, rate: float, burst: float, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be more than 0, not {rate}")
        if not burst > 0:
            raise ValueError(f"burst must be more than 0, not {burst}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        """Every key's bucket, least recently used first."""

    def __len__(self) -> int:
        """Keys whose buckets are held: those that have not refilled since last used,
        and perhaps a few that have and are not pruned yet."""
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Whether ``key`` may do something that costs ``cost`` tokens now; if it may,
        the tokens are spent."""
        if cost < 0:
            raise ValueError(f"cost cannot be negative: {cost}")
        self._drop_refilled(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._new_bucket(key, now)
        else:
            self._refill(bucket, now)
            self._buckets.move_to_end(key)
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True

    def _new_bucket(self, key: str, now: float) -> _Bucket:
        if len(self._buckets) >= self._max_keys:
            self._buckets.popitem(last=False)
        bucket = self._buckets[key] = _Bucket(self._burst, now)
        return bucket

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)

    def _drop_refilled(self, now: float) -> None:
        while self._buckets:
            bucket = next(iter(self._buckets.values()))
            if bucket.tokens + (now - bucket.updated) * self._rate < self._burst:
                break
            self._buckets.popitem(last=False)
