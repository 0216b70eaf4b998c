"""The session table: sessions expire, stay within their caps, and a stranger can
never push out someone else's live session."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.errors import HandshakeBusy, HandshakeFailed
from eidetica.protocol.sessions import (
    DEFAULT_MAX_SESSIONS,
    Session,
    SessionTable,
)

T0 = 1_700_000_000.0
HONEST = "ed25519:honest"


KEY = bytes(range(32))
"""A session key; these tests are about which peer key a session names."""


def session_id(*parts: object) -> bytes:
    return "/".join(map(str, parts)).encode()


def peer_of(table: SessionTable, session: bytes, now: float) -> str | None:
    """The peer key ``session`` names (a use of it), or ``None``."""
    found = table.lookup(session, now)
    return found.peer_key if found is not None else None


# Lookup and expiry


def test_a_session_names_the_key_it_proved() -> None:
    table = SessionTable()
    table.add(b"s", HONEST, "10.0.0.1", T0, key=KEY)
    assert peer_of(table, b"s", T0) == HONEST
    assert peer_of(table, b"unknown", T0) is None
    assert len(table) == 1


def test_a_session_expires_after_idle_ttl_without_use() -> None:
    table = SessionTable(idle_ttl=100)
    table.add(b"s", HONEST, "a", T0, key=KEY)
    table.add(b"idle", HONEST, "a", T0, key=KEY)
    assert peer_of(table, b"s", T0 + 100) == HONEST
    assert peer_of(table, b"idle", T0 + 101) is None
    assert peer_of(table, b"s", T0 + 200) == HONEST
    assert peer_of(table, b"s", T0 + 301) is None
    assert len(table) == 0


def test_a_session_holds_the_key_its_macs_are_made_with() -> None:
    table = SessionTable()
    table.add(b"s", HONEST, "10.0.0.1", T0, key=KEY)
    assert table.lookup(b"s", T0) == Session(HONEST, KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        table.add(b"t", HONEST, "10.0.0.1", T0, key=KEY[:16])


def test_finding_a_session_is_not_a_use_so_unproven_requests_keep_none_alive() -> None:
    """The service finds a request's session, checks its MAC, and only then uses it: a
    relay that knows the session id but not its key cannot keep it from idling out."""
    table = SessionTable(idle_ttl=100, max_age=1000)
    table.add(b"s", HONEST, "a", T0, key=KEY)
    table.add(b"used", HONEST, "a", T0, key=KEY)
    for later in (40, 80, 100):
        assert table.find(b"s", T0 + later) is not None
    table.use(b"used", T0 + 100)
    assert table.find(b"s", T0 + 101) is None
    assert table.find(b"used", T0 + 199) is not None
    table.use(b"gone", T0 + 199)  # a session the table does not hold: nothing happens


def test_a_session_in_use_still_expires_at_max_age() -> None:
    table = SessionTable(idle_ttl=100, max_age=1000)
    table.add(b"s", HONEST, "a", T0, key=KEY)
    for later in range(0, 1001, 50):
        assert peer_of(table, b"s", T0 + later) == HONEST
    assert peer_of(table, b"s", T0 + 1001) is None


def test_expired_sessions_are_pruned_by_any_call() -> None:
    table = SessionTable(idle_ttl=10, max_age=50)
    for number in range(100):
        table.add(
            session_id(number), HONEST if number < 8 else f"k{number}", f"s{number}", T0, key=KEY
        )
    assert len(table) == 100
    peer_of(table, b"anything", T0 + 11)
    assert len(table) == 0


def test_an_expired_session_is_never_found_even_when_the_clock_steps_back() -> None:
    """Pruning trusts the clock not to go back; a lookup checks its session anyway."""
    table = SessionTable(idle_ttl=10)
    table.add(b"later", HONEST, "a", T0 + 100, key=KEY)
    table.add(b"earlier", HONEST, "b", T0, key=KEY)
    assert peer_of(table, b"earlier", T0 + 105) is None
    assert peer_of(table, b"later", T0 + 105) == HONEST
    peer_of(table, b"anything", T0 + 200)
    assert peer_of(table, b"later", T0 + 105) is None


# Caps


def test_a_source_at_its_cap_replaces_its_own_least_recently_used_session() -> None:
    table = SessionTable(max_per_source=3)
    for number in range(3):
        table.add(session_id(number), f"key{number}", "busy source", T0, key=KEY)
    table.add(b"elsewhere", HONEST, "other source", T0, key=KEY)
    assert peer_of(table, session_id(0), T0 + 1) == "key0"  # now 1 is the least recent
    table.add(b"fourth", "key3", "busy source", T0 + 2, key=KEY)
    assert peer_of(table, session_id(1), T0 + 2) is None
    assert [peer_of(table, session_id(n), T0 + 2) for n in (0, 2)] == ["key0", "key2"]
    assert peer_of(table, b"elsewhere", T0 + 2) == HONEST
    assert len(table) == 4


def test_a_key_at_its_cap_replaces_its_own_least_recently_used_session() -> None:
    """Only the key's holder can prove it, so its sessions from any source are its own."""
    table = SessionTable(max_per_key=2)
    table.add(b"first", HONEST, "home", T0, key=KEY)
    table.add(b"second", HONEST, "office", T0 + 1, key=KEY)
    table.add(b"someone else", "ed25519:other", "office", T0 + 1, key=KEY)
    table.add(b"third", HONEST, "train", T0 + 2, key=KEY)
    assert peer_of(table, b"first", T0 + 2) is None
    assert peer_of(table, b"second", T0 + 2) == HONEST
    assert peer_of(table, b"third", T0 + 2) == HONEST
    assert peer_of(table, b"someone else", T0 + 2) == "ed25519:other"


def test_a_full_table_of_others_live_sessions_refuses_and_changes_nothing() -> None:
    table = SessionTable(max_sessions=3, idle_ttl=100)
    for number in range(3):
        table.add(session_id(number), f"key{number}", f"source{number}", T0, key=KEY)
    with pytest.raises(HandshakeBusy, match="busy") as refused:
        table.add(b"newcomer", "ed25519:new", "new source", T0 + 50, key=KEY)
    assert isinstance(refused.value, HandshakeFailed)
    assert [peer_of(table, session_id(n), T0 + 50) for n in range(3)] == ["key0", "key1", "key2"]
    assert peer_of(table, b"newcomer", T0 + 50) is None
    table.add(b"newcomer", "ed25519:new", "new source", T0 + 151, key=KEY)
    assert peer_of(table, b"newcomer", T0 + 151) == "ed25519:new"
    assert len(table) == 1


@pytest.mark.parametrize(("source", "key"), [("source1", "new key"), ("new source", "key1")])
def test_a_full_table_lets_a_newcomer_replace_a_session_of_its_own(source: str, key: str) -> None:
    table = SessionTable(max_sessions=3)
    for number in range(3):
        table.add(session_id(number), f"key{number}", f"source{number}", T0, key=KEY)
    table.add(b"newcomer", key, source, T0, key=KEY)
    assert peer_of(table, session_id(1), T0) is None
    assert peer_of(table, b"newcomer", T0) == key
    assert [peer_of(table, session_id(n), T0) for n in (0, 2)] == ["key0", "key2"]


def test_5000_strangers_sessions_never_evict_a_live_session() -> None:
    """Issue 9: 4,200 throwaway-key handshakes used to push a live peer's session out,
    first in, first out."""
    table = SessionTable()
    table.add(b"honest", HONEST, "127.0.0.1", T0, key=KEY)
    refused = 0
    for number in range(5000):
        try:
            table.add(
                session_id(number), f"throwaway{number}", f"10.0.{number // 20}.1", T0 + 1, key=KEY
            )
        except HandshakeBusy:
            refused += 1
    # The 4,095th fills the table; the last four of its source (10.0.204.1) replace
    # that source's own sessions; every later source is refused.
    assert refused == 5000 - 4100
    assert len(table) == DEFAULT_MAX_SESSIONS
    assert peer_of(table, b"honest", T0 + 2) == HONEST


def test_one_source_flooding_sessions_only_replaces_its_own() -> None:
    table = SessionTable()
    table.add(b"honest", HONEST, "127.0.0.1", T0, key=KEY)
    for number in range(5000):
        table.add(session_id(number), f"throwaway{number}", "10.0.0.1", T0 + 1, key=KEY)
    assert len(table) == 1 + 64
    assert peer_of(table, b"honest", T0 + 2) == HONEST


def test_forget_key_drops_all_its_sessions() -> None:
    table = SessionTable()
    table.add(b"one", HONEST, "a", T0, key=KEY)
    table.add(b"two", HONEST, "b", T0, key=KEY)
    table.add(b"other", "ed25519:other", "a", T0, key=KEY)
    assert table.forget_key(HONEST) == 2
    assert table.forget_key(HONEST) == 0
    assert peer_of(table, b"one", T0) is None
    assert peer_of(table, b"other", T0) == "ed25519:other"
    assert len(table) == 1


def test_adding_a_session_again_replaces_it() -> None:
    table = SessionTable(max_sessions=1)
    table.add(b"s", HONEST, "a", T0, key=KEY)
    table.add(b"s", "ed25519:other", "b", T0 + 1, key=KEY)
    assert peer_of(table, b"s", T0 + 1) == "ed25519:other"
    assert len(table) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_sessions": 0},
        {"max_per_source": 0},
        {"max_per_key": 0},
        {"idle_ttl": 0.0},
        {"max_age": -1.0},
    ],
)
def test_bounds_that_allow_nothing_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SessionTable(
            idle_ttl=bad.get("idle_ttl", 1.0),
            max_age=bad.get("max_age", 1.0),
            max_sessions=int(bad.get("max_sessions", 1)),
            max_per_source=int(bad.get("max_per_source", 1)),
            max_per_key=int(bad.get("max_per_key", 1)),
        )


# Properties

MAX_SESSIONS, MAX_PER_SOURCE, MAX_PER_KEY, IDLE_TTL, MAX_AGE = 6, 3, 2, 10.0, 25.0


@dataclass
class Known:
    """What the test knows of a session it added and that the table still holds."""

    peer_key: str
    source: str
    created: float
    last_used: float

    def live(self, now: float) -> bool:
        return now - self.last_used <= IDLE_TTL and now - self.created <= MAX_AGE


_advances = st.sampled_from([0, 0, 0, 1, 4, 11])
_adds = st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 7), _advances)
_lookups = st.tuples(st.just("lookup"), st.integers(0, 40), st.just(0), _advances)


@given(st.lists(st.one_of(_adds, _lookups), max_size=60))
@settings(deadline=None, max_examples=300)
def test_no_sequence_of_adds_and_lookups_breaks_a_bound_or_evicts_a_strangers_session(
    operations: list[tuple[str, int, int, int]],
) -> None:
    table = SessionTable(
        idle_ttl=IDLE_TTL,
        max_age=MAX_AGE,
        max_sessions=MAX_SESSIONS,
        max_per_source=MAX_PER_SOURCE,
        max_per_key=MAX_PER_KEY,
    )
    held: dict[bytes, Known] = {}
    added = 0
    now = T0
    for kind, first, second, advance in operations:
        now += advance
        held = {session: known for session, known in held.items() if known.live(now)}
        if kind == "lookup":
            session = session_id(first)
            expected = held[session].peer_key if session in held else None
            assert peer_of(table, session, now) == expected
            if session in held:
                held[session].last_used = now
            continue
        source, peer_key, session = f"source{first}", f"key{second}", session_id(added)
        added += 1
        strangers = {
            s for s, known in held.items() if known.source != source and known.peer_key != peer_key
        }
        try:
            table.add(session, peer_key, source, now, key=KEY)
        except HandshakeBusy:
            assert len(held) == MAX_SESSIONS
            assert set(held) == strangers
        else:
            held[session] = Known(peer_key, source, now, now)
        still = {s for s in held if peer_of(table, s, now) is not None}
        for s in still:
            held[s].last_used = now
        assert strangers <= still
        held = {s: held[s] for s in still}
        assert len(table) == len(held) <= MAX_SESSIONS
        for group, cap in (("source", MAX_PER_SOURCE), ("peer_key", MAX_PER_KEY)):
            sizes: dict[str, int] = {}
            for known in held.values():
                name = getattr(known, group)
                sizes[name] = sizes.get(name, 0) + 1
            assert max(sizes.values(), default=0) <= cap
