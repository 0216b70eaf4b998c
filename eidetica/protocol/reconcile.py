"""The reconciliation planner: what to ask for and what to send, both ways at once.

One sync is two round trips (see ``docs/protocol.md``):

1. The initiator sends :class:`SyncRequest` with its tips and a summary of what it
   holds near them. The responder answers with the entries the initiator lacks,
   parents first, in pages; with its own tips; and, when it lacks some of the
   initiator's tips, its own summary.
2. The initiator sends what the responder lacks in :class:`SendEntries` pages; the
   :class:`Ack` names parents still missing, which the next page (or a last, empty
   one) carries.

When one side knows all of the other's tips, the difference is exact: everything
between its tips and theirs. Otherwise the walk stops at entries the other side's
summary or haves say it holds. A summary's false positive makes a side send too
little, never too much, and ``need`` repairs it.

A sync with a **cursor** (the tips both sides held after their last complete sync)
sends no summary: the responder walks down to the initiator's tips it knows and to
the cursor, and the initiator, once it holds the responder's tips, knows exactly what
the responder lacks. A side that does not hold the cursor falls back to summaries.

Everything here is pure: it reads a :class:`DagView` and returns messages.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

from eidetica.protocol import limits
from eidetica.protocol.dagview import DagView, walk
from eidetica.protocol.messages import Ack, SendEntries, Summary, SyncRequest, SyncResponse
from eidetica.protocol.randomness import RandomBytes
from eidetica.protocol.summary import SALT_BYTES, WINDOW_HEIGHTS, summarize, summary_holds

PAGE_BYTES = 8 * 1024 * 1024
"""Entry bytes in one page, well under ``limits.MAX_MESSAGE_BYTES`` even as base64."""

MAX_HAVES = 64

RESUME_BYTES = 16
"""Bytes of a resume token, which names one plan kept for the next page."""


def summary_floor(view: DagView, common: Iterable[str] = ()) -> int:
    """Where a summary of ``view`` starts: a window below the highest tip, and deep
    enough to include the entries believed common with the peer (its sync cursor)."""
    heights = [node.height for node in view.nodes(view.tips()).values()]
    floor = max(0, max(heights, default=0) - WINDOW_HEIGHTS)
    common_heights = [node.height for node in view.nodes(common).values()]
    return min([floor, *common_heights])


def haves_below(view: DagView, floor: int, common: Iterable[str] = ()) -> tuple[str, ...]:
    """Entries at exponentially spaced heights below ``floor`` (each a quarter further
    than the last, so a peer's walk overshoots the real divergence by at most about a
    quarter), plus ``common``.

    Any held entry is an ancestor of some tip, so one entry per height will do. A peer
    that knows one of them stops its walk there; without them it would send all the
    history below the summary.
    """
    haves = dict.fromkeys(view.nodes(common))
    distance = 1
    while floor - distance >= 0 and len(haves) < MAX_HAVES:
        found = next(iter(view.ids_from(floor - distance)), None)
        if found is not None:
            haves[found] = None
        distance = max(distance + 1, distance * 5 // 4)
    if floor > 0 and len(haves) < MAX_HAVES:
        root = next(iter(view.ids_from(0)), None)
        if root is not None:
            haves[root] = None
    return tuple(haves)


def make_request(
    view: DagView,
    tree: str,
    *,
    common: Iterable[str] = (),
    need: Iterable[str] = (),
    resume: bytes = b"",
    salt: bytes | None = None,
) -> SyncRequest:
    """The initiator's request: my tips, my summary, and what I know I need."""
    common = list(common)
    floor = summary_floor(view, common)
    return SyncRequest(
        tree=tree,
        tips=tuple(view.tips()),
        summary=summarize(view, min_height=floor, salt=salt),
        haves=haves_below(view, floor, common),
        need=tuple(sorted(set(need)))[: limits.MAX_IDS_PER_MESSAGE],
        resume=resume,
    )


def cursor_request(
    view: DagView,
    tree: str,
    cursor: Iterable[str],
    *,
    need: Iterable[str] = (),
    resume: bytes = b"",
) -> SyncRequest | None:
    """The initiator's request when it has a cursor: my tips and the cursor, no
    summary. None when the cursor is empty or names an entry this side does not hold
    (it lost data, or the entry is dead here): then only a summary says what it holds."""
    cursor = tuple(sorted(set(cursor)))[: limits.MAX_IDS_PER_MESSAGE]
    if not cursor or len(view.nodes(cursor)) < len(cursor):
        return None
    return SyncRequest(
        tree=tree,
        tips=tuple(view.tips()),
        summary=None,
        cursor=cursor,
        need=tuple(sorted(set(need)))[: limits.MAX_IDS_PER_MESSAGE],
        resume=resume,
    )


def beyond_cursor(view: DagView, tips: Sequence[str], cursor: Sequence[str]) -> list[str] | None:
    """Ids of the entries reachable from this side's tips and from none of the peer's
    ``tips`` this side knows nor of its ``cursor``, parents first: what a peer that
    sent them lacks, save entries both got elsewhere since the cursor.

    None when this side cannot tell: some of the cursor is not held here and some of
    the tips are unknown (a walk to the known ones alone could send the whole tree).
    The walk stops at whatever the peer names, so a peer that names what it does not
    hold only gets less than it needs; it is no longer than a walk of this side's tree.
    """
    known = view.nodes(tips)
    held = view.nodes(cursor)
    if len(held) < len(cursor) and len(known) < len(tips):
        return None
    return walk(view, view.tips(), stop=[*known, *held])


def lacking(
    view: DagView, tips: Sequence[str], summary: Summary | None, haves: Sequence[str] = ()
) -> list[str]:
    """Ids of entries this side holds that a peer with these tips, summary and haves
    lacks, parents first.

    A peer with no tips holds nothing of the tree, so it lacks all of it: listed in
    height order, not walked, which for a 100,000-entry tree is a scan of ids where
    the walk looked up every entry's parents in one step of the loop."""
    if not tips and not haves:
        return list(view.ids_from(0))
    known = view.nodes(tips)
    if len(known) == len(tips):  # the peer is behind: the difference is exact
        return walk(view, view.tips(), stop=tips)
    held = summary_holds(summary, view) if summary is not None else None
    return walk(view, view.tips(), stop=[*known, *haves], held=held)


def pages(
    view: DagView, ids: Sequence[str], *, max_entries: int = limits.MAX_ENTRIES_PER_BATCH
) -> Iterator[list[bytes]]:
    """The entries' bytes in pages bounded by count and :data:`PAGE_BYTES`."""
    page: list[bytes] = []
    size = 0
    for start in range(0, len(ids), max_entries):
        for raw in view.raw(ids[start : start + max_entries]):
            if page and (len(page) == max_entries or size + len(raw) > PAGE_BYTES):
                yield page
                page, size = [], 0
            page.append(raw)
            size += len(raw)
    if page:
        yield page


@dataclass
class _Plan:
    peer: str
    tree: str
    remaining: list[str]


class Responder:
    """Answers sync requests, keeping a bounded number of multi-page plans so that a
    large transfer is planned once, not once per page. Its resume tokens and summary
    salts come from ``random_bytes`` (the node's randomness)."""

    def __init__(
        self,
        *,
        max_plans: int = 64,
        max_entries: int = limits.MAX_ENTRIES_PER_PAGE,
        random_bytes: RandomBytes = os.urandom,
    ):
        self._random_bytes = random_bytes
        self._plans: OrderedDict[bytes, _Plan] = OrderedDict()
        self._max_plans = max_plans
        self._max_entries = max_entries

    def answer(self, view: DagView, request: SyncRequest, *, peer: str) -> SyncResponse:
        """The response to one request from ``peer`` (a proven key)."""
        plan = self._plans.pop(request.resume, None) if request.resume else None
        if plan is None or plan.peer != peer or plan.tree != request.tree:
            ids = self._plan(view, request)
            if ids is None:
                return SyncResponse(
                    tree=request.tree,
                    tips=tuple(view.tips()),
                    entries=(),
                    more=False,
                    ask_summary=True,
                )
            plan = _Plan(peer, request.tree, ids)
        elif request.need:
            plan.remaining = _merge(view, plan.remaining, request.need)
        page, remaining = _take(view, plan.remaining, self._max_entries)
        resume = b""
        if remaining:
            resume = self._random_bytes(RESUME_BYTES)
            plan.remaining = remaining
            self._plans[resume] = plan
            while len(self._plans) > self._max_plans:
                self._plans.popitem(last=False)
        known_tips = view.nodes(request.tips)
        summary = None
        haves: tuple[str, ...] = ()
        if request.summary is None:
            # A cursor's sync: after the last page the initiator holds our tips, so it
            # knows exactly what we lack. Should it not, it walks down to the cursor.
            haves = tuple(view.nodes(request.cursor))
        elif not remaining and len(known_tips) < len(request.tips):
            # The initiator has entries we lack; it reads our summary after the last page.
            floor = summary_floor(view)
            summary = summarize(view, min_height=floor, salt=self._random_bytes(SALT_BYTES))
            haves = haves_below(view, floor)
        return SyncResponse(
            tree=request.tree,
            tips=tuple(view.tips()),
            entries=page,
            more=bool(remaining),
            summary=summary,
            haves=haves,
            resume=resume,
            remaining=len(remaining),
        )

    def _plan(self, view: DagView, request: SyncRequest) -> list[str] | None:
        """What the initiator lacks, or None if a cursor request cannot tell."""
        if request.summary is None:
            ids = beyond_cursor(view, request.tips, request.cursor)
            if ids is None:
                return None
        else:
            ids = lacking(view, request.tips, request.summary, request.haves)
        return _merge(view, ids, request.need) if request.need else ids


def answer_need(view: DagView, need: Iterable[str]) -> tuple[bytes, ...]:
    """The entries named in ``need`` that this side holds, parents first."""
    return tuple(view.raw(_merge(view, [], need)))


def _merge(view: DagView, ids: list[str], extra: Iterable[str]) -> list[str]:
    """``ids`` and the held ones of ``extra``, in (height, id) order."""
    nodes = view.nodes({*ids, *extra})
    return sorted(nodes, key=lambda entry_id: (nodes[entry_id].height, entry_id))


def _take(view: DagView, ids: list[str], max_entries: int) -> tuple[tuple[bytes, ...], list[str]]:
    """The bytes of the first page of ``ids`` (by count and bytes), and the ids left.

    Read a batch at a time, so a page the byte cap cuts short reads few entries it
    does not send."""
    page: list[bytes] = []
    size = 0
    end = min(len(ids), max_entries)
    for start in range(0, end, limits.MAX_ENTRIES_PER_BATCH):
        for raw in view.raw(ids[start : min(end, start + limits.MAX_ENTRIES_PER_BATCH)]):
            if page and size + len(raw) > PAGE_BYTES:
                return tuple(page), ids[len(page) :]
            page.append(raw)
            size += len(raw)
    return tuple(page), ids[len(page) :]


def send_pages(
    view: DagView, tree: str, ids: Sequence[str], need: Iterable[str] = ()
) -> Iterator[SendEntries]:
    """``SendEntries`` messages carrying ``ids``; the first also names what we need."""
    need_ids = tuple(sorted(set(need)))[: limits.MAX_IDS_PER_MESSAGE]
    first = True
    for page in pages(view, ids):
        yield SendEntries(tree=tree, entries=tuple(page), need=need_ids if first else ())
        first = False
    if first and need_ids:
        yield SendEntries(tree=tree, entries=(), need=need_ids)


MAX_REPAIRS = 3
"""Rounds spent asking for missing parents before a sync gives up on them."""


class SyncRound:
    """The initiator's side of one full, two-way sync of one tree.

    Drive it with :meth:`first`, then hand each answer to :meth:`next` together with
    the ids the initiator still lacks after storing the answer's entries; send what it
    returns until it returns ``None``.
    """

    def __init__(
        self, view: DagView, tree: str, *, common: Iterable[str] = (), salt: bytes | None = None
    ) -> None:
        self._view = view
        self._tree = tree
        self._common = list(common)
        self._salt = salt
        self._outgoing: Iterator[SendEntries] | None = None
        self._opening: SyncRequest | None = None
        self.repairs = 0
        """Round trips spent fetching parents a summary's false positive held back."""
        self.round_trips = 0
        self.complete = False
        """True once both sides hold everything the other offered."""
        self.peer_tips: tuple[str, ...] = ()

    def first(self) -> SyncRequest:
        """The opening request: the cursor's if this side holds it, else a summary's."""
        self.round_trips = 1
        self._opening = cursor_request(self._view, self._tree, self._common)
        if self._opening is None:
            self._opening = self._summary_request(need=())
        return self._opening

    def _summary_request(self, need: Sequence[str]) -> SyncRequest:
        return make_request(self._view, self._tree, common=self._common, need=need, salt=self._salt)

    def next(
        self, answer: SyncResponse | Ack, missing: Iterable[str]
    ) -> SyncRequest | SendEntries | None:
        """The next message to send after ``answer``, or ``None`` when the round is over."""
        missing = sorted(set(missing))
        if isinstance(answer, SyncResponse):
            message = self._after_response(answer, missing)
        else:
            message = self._after_ack(answer, missing)
        if message is not None:
            self.round_trips += 1
        return message

    def _after_response(
        self, answer: SyncResponse, missing: list[str]
    ) -> SyncRequest | SendEntries | None:
        self.peer_tips = answer.tips
        if answer.ask_summary:
            # The peer does not hold our cursor: say what we hold with a summary, once.
            assert self._opening is not None, "first() opens the round"
            if self._opening.summary is not None:
                return None  # it asked for what it had: the round ends incomplete
            self._opening = self._summary_request(need=missing)
            return self._opening
        if answer.more:
            # The responder follows its plan; the opening summary still describes what
            # we held, so it is sent again rather than rebuilt for every page.
            assert self._opening is not None, "first() opens the round"
            return msgspec.structs.replace(
                self._opening,
                tips=tuple(self._view.tips()),
                need=tuple(missing[: limits.MAX_IDS_PER_MESSAGE]),
                resume=answer.resume,
            )
        ids = lacking(self._view, answer.tips, answer.summary, answer.haves)
        self._outgoing = send_pages(self._view, self._tree, ids)
        # A peer's tip we still lack was withheld by a false positive of our summary
        # with no descendant to give it away: ask for it.
        held_tips = self._view.nodes(answer.tips)
        missing = sorted({*missing, *(t for t in answer.tips if t not in held_tips)})
        return self._continue(peer_need=(), missing=missing)

    def _after_ack(self, answer: Ack, missing: list[str]) -> SendEntries | None:
        return self._continue(peer_need=answer.need, missing=missing)

    def _continue(self, peer_need: Sequence[str], missing: list[str]) -> SendEntries | None:
        need = tuple(missing[: limits.MAX_IDS_PER_MESSAGE])
        if peer_need or (missing and self._outgoing is None):
            # Parents the peer lacks go before anything else; so does our own need
            # when there is nothing left to send.
            return self._repair(peer_need, need)
        page = next(self._outgoing, None) if self._outgoing is not None else None
        if page is not None:
            return SendEntries(tree=self._tree, entries=page.entries, need=need)
        self._outgoing = None
        if missing:
            return self._repair((), need)
        self.complete = True
        return None

    def _repair(self, peer_need: Sequence[str], need: tuple[str, ...]) -> SendEntries | None:
        if self.repairs >= MAX_REPAIRS:
            return None
        self.repairs += 1
        entries = answer_need(self._view, peer_need)[: limits.MAX_ENTRIES_PER_BATCH]
        return SendEntries(tree=self._tree, entries=entries, need=need)


def acknowledge(
    view: DagView,
    message: SendEntries,
    *,
    stored: int,
    rejected: int,
    held: int,
    missing: Iterable[str],
) -> Ack:
    """The responder's answer to ``SendEntries``, once it has stored what it could."""
    return Ack(
        stored=stored,
        rejected=rejected,
        held=held,
        need=tuple(sorted(set(missing)))[: limits.MAX_IDS_PER_MESSAGE],
        entries=answer_need(view, message.need)[: limits.MAX_ENTRIES_PER_BATCH],
    )
