"""What a sync costs on a big tree when the two sides differ by a little or a lot.

Two in-memory sides share a :data:`PREFIX`-entry tree (a chain that forks for a few
entries every :data:`PREFIX_FORK_EVERY` and merges back, so heights trail counts) and
then differ by ``d`` entries, for each ``d`` in :data:`DIFFERENCES`:

- one side: the responder has ``d`` entries on top that the initiator lacks, the
  common case of a node catching up;
- both sides: each side has ``d`` entries of its own, built concurrently on the
  prefix with a fork and merge every :data:`NEW_FORK_EVERY` entries.

The sync runs through the planner of :mod:`eidetica.protocol.reconcile` and the
``Side`` of ``tests/protocol/peerpair.py``, every message going through the msgpack
codec. For each case it reports round trips, every byte on the wire (both ways)
against the bytes of the entries that had to move, the entries a side received that
it already held, and where the time went: in the pure planning calls, in storing
what arrived (validation, the holding area, the backend), and in the codec. These are
the figures the reconciliation design (a Bloom summary of a window of heights, plus
exponentially spaced ``haves`` below it) is meant to keep small: bytes close to the
difference, not to the tree, in two round trips.

A summary is salted afresh for every request, so a sync that goes through one (both
sides ahead) can go differently from run to run: those cases are run :data:`RUNS`
times, and a second table gives the spread. The one-side cases are exact (the
responder knows the initiator's tips) and run once.

The prefix is the costly part to build (an Ed25519 signature per entry), so it is
built once and shared by all cases; each side gets its own backend.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bench._table import print_table
from eidetica.protocol.entry import Entry
from eidetica.protocol.keys import SigningKey
from eidetica.protocol.limits import ENTROPY_BYTES
from eidetica.protocol.messages import Ack, SendEntries, SyncRequest, SyncResponse
from eidetica.protocol.reconcile import Responder, SyncRound, acknowledge
from tests.builders import child_entry, root_entry
from tests.protocol.peerpair import Side, Stats, carry

PREFIX = 100_000
PREFIX_FORK_EVERY = 50
NEW_FORK_EVERY = 25
DIFFERENCES = (1, 100, 10_000)
STORE = "d"
KEY = SigningKey(bytes(range(32)))
MAX_MESSAGES = 10_000
RUNS = 5
"""Runs of each sync that depends on a summary's random salt."""


def _root() -> Entry:
    """The tree's root, with fixed entropy so every run builds the same tree."""
    return root_entry(KEY, "bench", entropy=bytes(ENTROPY_BYTES))


def _child(root: Entry, parents: Sequence[Entry], label: str, index: int) -> Entry:
    return child_entry(KEY, root, parents, f"{label}{index}", index)


def _grow(root: Entry, tips: Sequence[Entry], label: str, fork_every: int) -> Iterator[Entry]:
    """Entries without end on top of ``tips``, parents first: a chain that every
    ``fork_every`` entries splits into branches of three and two entries, which the
    next entry merges again."""
    index = 0

    def child(parents: Sequence[Entry]) -> Entry:
        nonlocal index
        index += 1
        return _child(root, parents, label, index)

    heads = list(tips)
    while True:
        if index % fork_every == 0:
            branches: list[Entry] = []
            for length in (3, 2):
                head = heads
                for _ in range(length):
                    entry = child(head)
                    yield entry
                    head = [entry]
                branches += head
            heads = branches
        entry = child(heads)
        yield entry
        heads = [entry]


def build_prefix(count: int) -> list[Entry]:
    """``count`` entries of one tree, the root first."""
    root = _root()
    return [root, *itertools.islice(_grow(root, [root], "s", PREFIX_FORK_EVERY), count - 1)]


def _tips(entries: Sequence[Entry]) -> list[Entry]:
    referenced = {parent for entry in entries for parent in entry.parents}
    return [entry for entry in entries if entry.id not in referenced]


def build_branch(prefix: Sequence[Entry], label: str, count: int) -> list[Entry]:
    """``count`` new entries on top of ``prefix``'s tips, with a few merges of their own."""
    branch = _grow(prefix[0], _tips(prefix), label, NEW_FORK_EVERY)
    return list(itertools.islice(branch, count))


class Stopwatch:
    """The total time spent inside its ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.perf_counter() - self._began


@dataclass
class Timings:
    """Where the time of one sync went."""

    plan: Stopwatch = field(default_factory=Stopwatch)
    """In ``SyncRound.first``/``next``, ``Responder.answer`` and ``acknowledge``."""
    store: Stopwatch = field(default_factory=Stopwatch)
    """In ``Side.receive``: validating, holding and storing received entries."""
    codec: Stopwatch = field(default_factory=Stopwatch)
    """Encoding and decoding every message."""


@dataclass
class Outcome:
    """The figures of one sync."""

    stats: Stats
    timings: Timings
    first_request: SyncRequest
    redundant: int
    """Entries received by a side that already held them."""
    still_missing: int
    """Entries one side holds and the other still lacks once the sync is over."""


def timed_sync(initiator: Side, responder: Side) -> Outcome:
    """One full sync, driven as ``tests.protocol.peerpair.sync`` drives it, timing
    the planner, the storing of what arrives and the codec apart."""
    union = initiator.ids() | responder.ids()
    stats = Stats()
    timings = Timings()
    with timings.plan:
        serving = Responder()
        round_ = SyncRound(initiator.view, initiator.tree)
        first = round_.first()
    message: SyncRequest | SendEntries | None = first
    for _ in range(MAX_MESSAGES):
        if message is None:
            break
        with timings.codec:
            request = carry(message, stats)
        answer: SyncResponse | Ack
        match request:
            case SyncRequest():
                with timings.plan:
                    answer = serving.answer(responder.view, request, peer="initiator")
            case SendEntries():
                with timings.store:
                    missing = responder.receive(request.entries)
                with timings.plan:
                    answer = acknowledge(
                        responder.view, request, stored=0, rejected=0, held=0, missing=missing
                    )
            case _:
                raise TypeError(f"unexpected message to the responder: {type(request).__name__}")
        with timings.codec:
            received = carry(answer, stats)
        if not isinstance(received, SyncResponse | Ack):
            raise TypeError(f"unexpected message to the initiator: {type(received).__name__}")
        with timings.store:
            missing = initiator.receive(received.entries)
        with timings.plan:
            message = round_.next(received, missing)
    stats.round_trips = round_.round_trips
    stats.complete = round_.complete
    stats.repairs = round_.repairs
    return Outcome(
        stats=stats,
        timings=timings,
        first_request=first,
        redundant=initiator.redundant + responder.redundant,
        still_missing=len(union - initiator.ids()) + len(union - responder.ids()),
    )


@dataclass
class Case:
    """One sync to run: what each side holds beyond the shared prefix."""

    label: str
    difference: int
    initiator_extra: list[Entry]
    responder_extra: list[Entry]

    @property
    def needed_bytes(self) -> int:
        """The bytes of the entries one side or the other lacks."""
        extra = [*self.initiator_extra, *self.responder_extra]
        return sum(len(entry.raw) for entry in extra)


def _run(tree: str, prefix: Sequence[Entry], case: Case) -> Outcome:
    """Load two fresh sides for ``case`` and sync them."""
    initiator = Side(tree, [*prefix, *case.initiator_extra])
    responder = Side(tree, [*prefix, *case.responder_extra])
    return timed_sync(initiator, responder)


def _row(case: Case, outcome: Outcome) -> list[str]:
    stats = outcome.stats
    label = case.label
    if not stats.complete or outcome.still_missing:
        label += f" (INCOMPLETE, {outcome.still_missing:,} missing)"
    return [
        label,
        f"{case.difference:,}",
        f"{stats.round_trips}",
        f"{stats.repairs}",
        f"{stats.bytes_sent:,}",
        f"{case.needed_bytes:,}",
        f"{stats.bytes_sent / case.needed_bytes:.2f}",
        f"{outcome.redundant:,}",
        f"{outcome.timings.plan.seconds * 1e3:,.1f}",
        f"{outcome.timings.store.seconds * 1e3:,.1f}",
        f"{outcome.timings.codec.seconds * 1e3:,.1f}",
    ]


def _spread(values: Sequence[float], form: str = "{:,.0f}") -> str:
    low, high = min(values), max(values)
    return form.format(low) if low == high else f"{form.format(low)}-{form.format(high)}"


def _repeat_row(case: Case, outcomes: Sequence[Outcome]) -> list[str]:
    complete = sum(o.stats.complete and not o.still_missing for o in outcomes)
    return [
        case.label,
        f"{case.difference:,}",
        f"{complete} of {len(outcomes)}",
        _spread([o.stats.round_trips for o in outcomes]),
        _spread([o.stats.repairs for o in outcomes]),
        _spread([o.stats.bytes_sent / case.needed_bytes for o in outcomes], "{:.2f}"),
        _spread([o.redundant for o in outcomes]),
        _spread([o.still_missing for o in outcomes]),
    ]


def _summary_line(case: Case, request: SyncRequest) -> str:
    summary = request.summary
    if summary is None:
        return f"{case.label}, d={case.difference:,}: first request from a cursor, no summary"
    return (
        f"{case.label}, d={case.difference:,}: first request's summary "
        f"{len(summary.bits):,} B of bits (from height {summary.min_height:,}, "
        f"{summary.hashes} hashes), {len(request.haves)} haves, {len(request.tips)} tips"
    )


def main() -> None:
    began = time.perf_counter()
    prefix = build_prefix(PREFIX)
    prefix_seconds = time.perf_counter() - began
    began = time.perf_counter()
    longest = max(DIFFERENCES)
    ours = build_branch(prefix, "a", longest)
    theirs = build_branch(prefix, "b", longest)
    branch_seconds = time.perf_counter() - began
    tree = prefix[0].id
    cases = [Case("one side", d, [], theirs[:d]) for d in DIFFERENCES] + [
        Case("both sides", d, ours[:d], theirs[:d]) for d in DIFFERENCES
    ]
    began = time.perf_counter()
    runs = [[_run(tree, prefix, case)] for case in cases]
    main_seconds = time.perf_counter() - began
    heights = max(entry.height for entry in prefix)
    mean_bytes = sum(len(entry.raw) for entry in prefix) / len(prefix)
    print_table(
        f"Sync over a shared prefix of {PREFIX:,} entries (height {heights:,}, "
        f"mean {mean_bytes:.0f} B/entry), d entries missing; msgpack codec, both ways",
        [
            "missing on",
            "d",
            "round trips",
            "repairs",
            "wire bytes",
            "needed bytes",
            "wire/needed",
            "redundant",
            "plan ms",
            "store ms",
            "codec ms",
        ],
        [_row(case, outcomes[0]) for case, outcomes in zip(cases, runs, strict=True)],
    )
    print()
    for case, outcomes in zip(cases, runs, strict=True):
        print(_summary_line(case, outcomes[0].first_request))
    # Only syncs that go through a summary depend on its random salt; run them again.
    salted = [
        (case, outcomes) for case, outcomes in zip(cases, runs, strict=True) if case.initiator_extra
    ]
    began = time.perf_counter()
    for case, outcomes in salted:
        outcomes += [_run(tree, prefix, case) for _ in range(RUNS - 1)]
    repeat_seconds = time.perf_counter() - began
    print_table(
        f"The syncs that depend on the summary's random salt, over {RUNS} runs (min-max)",
        [
            "missing on",
            "d",
            "complete",
            "round trips",
            "repairs",
            "wire/needed",
            "redundant",
            "left missing",
        ],
        [_repeat_row(case, outcomes) for case, outcomes in salted],
    )
    print(
        f"\nsetup: prefix built in {prefix_seconds:.1f} s, "
        f"2 x {longest:,} new entries in {branch_seconds:.1f} s; "
        f"first runs (side loading included) {main_seconds:.1f} s, "
        f"repeats {repeat_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
