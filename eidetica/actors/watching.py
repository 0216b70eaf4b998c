"""Watches: the server's half of an HTTP client's long poll for new entries.

Over WebSocket a node reaches a peer that dialled it by sending requests back over
the peer's own link, so a commit is pushed at once. An HTTP request carries nothing
back, so a client that dialled us over HTTP asks instead: a ``watch`` names the trees
it syncs with us and, for each, the tips it holds or has heard of from us, and we hold
the request until we hold a tip of one of them that it did not name; then ``changed``
names those trees with our tips, and the client syncs them. When we can tell exactly
which entries the client lacks (we hold every tip it named) and they are few (at most
:data:`INLINE_ENTRIES` entries and :data:`INLINE_BYTES` bytes in one answer), the
answer carries them, as a push would, and the client need not sync at all. A watch
whose wait ends first is answered ``changed`` with no trees, and the client watches
again.

What a watch may learn and cost is bounded:

- Only trees the watcher may read are reported. Any other tree, existing or not, is
  never reported, so a watch tells no more than a ``sync`` request would.
- Trees this node pushes to the watcher itself (it dialled the watcher too, and
  relates them) are not reported: the push gets there first, and a report would only
  cost a second sync.
- Entries the watcher gives us while its watch is held count as named by it: its own
  push must not wake its own watch.
- A watch is held at most ``ServerLimits.longest_hold`` seconds, and no longer than
  the wait it asked for; it ends at once when the server begins to stop (the
  origin's ``stopping``), and with the request when the client goes away (the
  transport cancels the handler).
- At most ``max_watches_per_session`` watches are held for one session and
  ``max_watches`` for the node; one past either is answered ``busy`` at once.

One :class:`Watching` serves all of a node's services, so the caps are the node's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from eidetica.actors.transports.admission import ServerLimits
from eidetica.errors import WatchBusy
from eidetica.protocol import limits
from eidetica.protocol.dagview import walk
from eidetica.protocol.messages import Changed, TreeNews, Watch
from eidetica.storage.instance import Instance

INLINE_ENTRIES = 64
"""Entries one answer to a watch may carry (else the client syncs)."""

INLINE_BYTES = 1024 * 1024
"""Entry bytes one answer to a watch may carry."""

Pushes = Callable[[str, str], bool]
"""Whether this node pushes (peer key, tree)'s new entries to the peer itself."""

MayRead = Callable[[str], Awaitable[bool]]
"""Whether the watcher may read a tree (checked only for trees that would be reported)."""


@dataclass(eq=False)
class HeldWatch:
    """One watch being held: whose, and per tree the tips that count as named."""

    peer: str
    session: bytes
    named: dict[str, set[str]] = field(default_factory=dict)

    def unnamed(self, tree: str, tips: Sequence[str]) -> bool:
        """Whether ``tips`` (the server's, of ``tree``) hold one the watcher did not name."""
        named = self.named.get(tree, set())
        return any(tip not in named for tip in tips)


class Watching:
    """The node's held watches: their caps, and what each is waiting for."""

    def __init__(
        self,
        instance: Instance,
        limits: ServerLimits | None = None,
        *,
        pushes: Pushes | None = None,
    ) -> None:
        limits = limits or ServerLimits()
        self._instance = instance
        self._longest = limits.longest_hold
        self._max = limits.max_watches
        self._max_per_session = limits.max_watches_per_session
        self._pushes = pushes
        self._by_session: Counter[bytes] = Counter()
        self._held: list[HeldWatch] = []
        self.refused = 0
        """Watches answered ``busy``."""
        self.version = 0
        """Counts the watches taken in and let go; see :meth:`changed`."""
        self._moved = trio.Event()

    @property
    def held(self) -> int:
        """Watches held now."""
        return len(self._held)

    def admit(self, peer: str, session: bytes, watch: Watch) -> HeldWatch:
        """Count a new watch in; :class:`WatchBusy` past a cap. Pair with :meth:`release`."""
        if self._by_session[session] >= self._max_per_session:
            self.refused += 1
            raise WatchBusy(
                f"busy: {self._by_session[session]} watches are held for this session, its limit"
            )
        if len(self._held) >= self._max:
            self.refused += 1
            raise WatchBusy(f"busy: the node holds {len(self._held)} watches, its limit")
        held = HeldWatch(peer, session, {item.tree: set(item.tips) for item in watch.trees})
        self._held.append(held)
        self._by_session[session] += 1
        self._count_move()
        return held

    def release(self, held: HeldWatch) -> None:
        """A watch :meth:`admit` counted in is over."""
        self._held.remove(held)
        self._by_session[held.session] -= 1
        if self._by_session[held.session] <= 0:
            del self._by_session[held.session]
        self._count_move()

    async def changed(self, since: int) -> int:
        """Wait until a watch was taken in or let go after :attr:`version` was
        ``since``; return the new version (for tests and status, as
        ``Instance.changed`` is for entries)."""
        while self.version <= since:
            await self._moved.wait()
        return self.version

    def _count_move(self) -> None:
        self.version += 1
        self._moved.set()
        self._moved = trio.Event()

    def received(self, peer: str, tree: str, stored: Iterable[str], sent: Sequence[bytes]) -> None:
        """``peer`` sent us entries ``sent`` of ``tree``, and ``stored`` were new: those
        of them it sent count as named by its watches of the tree (entries released
        from the holding area by its parents came from someone else, and do not)."""
        watches = [held for held in self._held if held.peer == peer and tree in held.named]
        if not watches:
            return
        mine = {hashlib.sha256(raw).hexdigest() for raw in sent}
        given = [entry_id for entry_id in stored if entry_id in mine]
        for held in watches:
            held.named[tree].update(given)

    async def hold(
        self,
        watch: Watch,
        *,
        peer: str,
        session: bytes,
        may_read: MayRead,
        stopping: trio.Event | None = None,
    ) -> Changed:
        """Answer ``watch`` from ``peer`` (under ``session``): as soon as one of its
        trees has news for it, or empty when its wait, the longest hold or the server
        ends first."""
        held = self.admit(peer, session, watch)
        try:
            news: tuple[TreeNews, ...] = ()
            with trio.move_on_after(min(float(watch.wait), self._longest)) as waiting:
                async with trio.open_nursery() as nursery:
                    if stopping is not None:
                        nursery.start_soon(_cancel_when, stopping, waiting)
                    news = await self._wait_for_news(held, may_read)
                    nursery.cancel_scope.cancel()
            return Changed(trees=news)
        finally:
            self.release(held)

    async def _wait_for_news(self, held: HeldWatch, may_read: MayRead) -> tuple[TreeNews, ...]:
        """The watched trees with news, once there are any.

        Trees this node does not hold, or the watcher may not read, when the watch
        arrives are left out of it at once (one arriving later is watched by the next
        watch): what each store of this node costs is then one look at the tips of
        each tree that could be reported, whatever a watcher names.
        """
        for tree in list(held.named):
            if not self._instance.backend.tips(tree) or not await may_read(tree):
                del held.named[tree]
        if not held.named:
            await trio.sleep_forever()  # until the hold ends: nothing can be reported
        while True:
            version = self._instance.version  # read before looking: no change is missed
            news = await self._news(held, may_read)
            if news:
                return news
            await self._instance.changed(version)

    async def _news(self, held: HeldWatch, may_read: MayRead) -> tuple[TreeNews, ...]:
        """The trees of ``held`` for which this node holds a tip the watcher did not
        name, that the watcher may read (still: a revocation may have come during the
        hold), and that this node does not push to it itself."""
        news: list[TreeNews] = []
        room = _Room(INLINE_ENTRIES, INLINE_BYTES)
        for tree in held.named:
            tips = self._instance.sync_tips(tree)
            if not held.unnamed(tree, tips):
                continue
            if self._pushes is not None and self._pushes(held.peer, tree):
                continue
            if not await may_read(tree):
                continue
            entries = self._lacking(tree, held.named[tree], room)
            news.append(TreeNews(tree, tuple(tips[: limits.MAX_IDS_PER_MESSAGE]), entries))
        return tuple(news)

    def _lacking(self, tree: str, named: set[str], room: _Room) -> tuple[bytes, ...]:
        """The entries of ``tree`` a watcher that named ``named`` lacks, parents first,
        if this node holds every one of ``named`` (so the difference is exact) and
        they fit in ``room``; else none."""
        view = self._instance.sync_view(tree)
        if len(view.nodes(named)) != len(named):
            return ()  # it holds entries we lack: only a sync can tell what it needs
        ids = walk(view, view.tips(), stop=named, limit=room.entries)
        if len(ids) > room.entries:
            return ()
        raws = view.raw(ids)
        size = sum(map(len, raws))
        if size > room.size:
            return ()
        room.entries -= len(raws)
        room.size -= size
        return tuple(raws)


@dataclass
class _Room:
    """What one answer may still carry of entries."""

    entries: int
    size: int


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
