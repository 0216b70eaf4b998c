"""The watch loop: how a node that dialled a peer over HTTP hears of the peer's news.

Over WebSocket the node we dialled pushes its commits back over our link. An HTTP
request carries nothing back, so without this loop we would hear of the peer's
entries only at our periodic sync. Instead, for a link over a transport that asks for
it (``long_poll``: HTTP), the loop keeps one ``watch`` open on the peer: the trees we
sync with it, each with the tips we hold and those the peer told us of before. The
peer holds it until it has a tip we did not name (see
:mod:`eidetica.actors.watching`), and we then ask the supervisor to sync those trees
with it (:class:`~eidetica.actors.commands.TreesChanged`) and wait for that sync
before watching again; when the answer carries the entries we lack (the peer could
tell, and they were few) we store them as a push's, and need no sync. Our own commits
reach the peer as pushes, as over any transport.

The loop is careful with the peer's time and its own:

- Every wait has a deadline: the watch (its wait plus :attr:`WatchConfig.margin`),
  the sync it asks for (:attr:`WatchConfig.sync_within`).
- Whatever fails (the request, the sync, an answer that names nothing we asked for, an
  empty answer sooner than a held watch would end, tips we still lack after it) makes
  the next watch wait, from :attr:`WatchConfig.backoff_min` doubling to
  :attr:`WatchConfig.backoff_max` (plus up to 10%), so a peer that answers at once,
  honestly or not, never gets a tight loop. One round that brings news resets it.
- The tips a peer reported are named in the next watch once they were taken in (or
  their sync done), so a tip we cannot take (the peer holds an entry we refuse) is
  reported once, not at every watch.
- A peer that does not know ``watch`` (an older version answers ``unknown-message``)
  ends the loop for that link, with one log line; the periodic sync still runs.
- An ``unauthenticated`` answer (the peer forgot our session) makes one fresh
  handshake before the next watch.
- A tree newly related to the peer is seen at once (or within
  :attr:`WatchConfig.trees_poll` seconds): the open watch is dropped and one that
  names it too is sent.

The loop runs beside the peer's actor, and ends with it (the peer removed, or moved
to another link).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import trio

from eidetica.actors import commands as cmd
from eidetica.actors.link import Link
from eidetica.actors.reply import Reply
from eidetica.actors.transports.base import Transport
from eidetica.errors import EideticaError, RemoteError
from eidetica.protocol import limits
from eidetica.protocol.messages import Changed
from eidetica.storage.instance import Instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchConfig:
    """The watch loop's times, in seconds of trio time."""

    wait: int = 20
    """How long the peer may hold one watch; below the HTTP client's 30 s bound on a
    request, so that the answer comes before the request is given up."""
    margin: float = 10.0
    """How much longer than ``wait`` the answer may take before the watch is given up."""
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    trees_poll: float = 1.0
    """How often the trees related to the peer are looked at for new ones, besides
    whenever this node stores entries."""
    sync_within: float = 300.0
    """How long the sync of reported trees may take before the loop watches again."""
    quick: float = 1.0
    """An empty answer sooner than this was no held watch: the loop waits before the next."""


def watched(transport: Transport) -> bool:
    """Whether a link over ``transport`` needs a watch to hear of its peer's news:
    the transport says so with ``long_poll`` (HTTP does; two-way WebSocket has its
    pushes, and the sim network's tests count their requests)."""
    return bool(getattr(transport, "long_poll", False))


async def run_watch(
    instance: Instance,
    link: Link,
    trees: Callable[[], Collection[str]],
    report: trio.MemorySendChannel[cmd.Command],
    *,
    config: WatchConfig | None = None,
) -> None:
    """Keep a watch open on ``link``'s peer for the trees ``trees()`` names (read
    again at every round), and have the supervisor (``report``) sync the ones it
    reports; until cancelled, or until the peer shows it does not know watches.
    Never raises but cancellation: it runs beside the peer's actor, which a fault of
    the loop's own must not take down (the loop ends, logged, and the periodic sync
    is left to bring the peer's news)."""
    async with report:
        try:
            await _Watcher(instance, link, trees, report, config or WatchConfig()).run()
        except Exception:
            log.exception("the watch on peer %s at %s failed", link.peer_key, link.address)


class _Watcher:
    """One link's watch loop and what it remembers between rounds."""

    def __init__(
        self,
        instance: Instance,
        link: Link,
        trees: Callable[[], Collection[str]],
        report: trio.MemorySendChannel[cmd.Command],
        config: WatchConfig,
    ) -> None:
        self._instance = instance
        self._link = link
        self._trees = trees
        self._report = report
        self._config = config
        self._heard: dict[str, frozenset[str]] = {}
        """Per tree, the tips the peer reported last, once their sync was done."""
        self._pause = 0.0
        """The wait before the next round: 0, or the backoff after a failure."""
        self._handshaken = False
        """Whether this failure streak has had its fresh handshake already."""
        self._rng = instance.randomness.random()
        self._warned_cap = False

    async def run(self) -> None:
        while True:
            if self._pause:
                await trio.sleep(self._pause)
            names = self._names()
            if not names:
                await self._trees_added(frozenset())
                continue
            began = trio.current_time()
            try:
                answer = await self._watch(names)
            except RemoteError as exc:
                if exc.code == "unknown-message":
                    log.info(
                        "peer %s at %s does not know watches (an older version): "
                        "its news reaches us at the periodic sync",
                        self._link.peer_key,
                        self._link.address,
                    )
                    return
                if exc.code == "unauthenticated" and not self._handshaken:
                    await self._handshake()
                    continue
                self._back_off(str(exc))
                continue
            except EideticaError as exc:
                self._back_off(str(exc))
                continue
            self._handshaken = False
            if answer is None:  # a tree was related meanwhile: watch it too, now
                continue
            await self._answered(answer, names, began)

    def _names(self) -> frozenset[str]:
        """The trees to watch: those related to the peer, at most a watch's worth."""
        names = sorted(self._trees())
        if len(names) > limits.MAX_WATCH_TREES and not self._warned_cap:
            self._warned_cap = True
            log.warning(
                "peer %s: watching %d of its %d trees; the others wait for the periodic sync",
                self._link.peer_key,
                limits.MAX_WATCH_TREES,
                len(names),
            )
        chosen = frozenset(names[: limits.MAX_WATCH_TREES])
        for tree in set(self._heard) - chosen:
            del self._heard[tree]
        return chosen

    async def _watch(self, names: frozenset[str]) -> Changed | None:
        """One watch of ``names``: the answer, or None if a tree was related while it
        was held (it is dropped). Raises what the request raised."""
        instance = self._instance
        named = [
            (tree, sorted(set(instance.sync_tips(tree)) | self._heard.get(tree, frozenset())))
            for tree in sorted(names)
        ]
        named = [(tree, tips[: limits.MAX_IDS_PER_MESSAGE]) for tree, tips in named]
        outcome: list[Changed | EideticaError] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                deadline = self._config.wait + self._config.margin
                with trio.move_on_after(deadline):
                    try:
                        outcome.append(await self._link.watch(named, wait=self._config.wait))
                    except EideticaError as exc:
                        outcome.append(exc)
                if not outcome:
                    outcome.append(EideticaError(f"no answer to a watch within {deadline} s"))
                nursery.cancel_scope.cancel()

            nursery.start_soon(ask)
            await self._trees_added(names)
            nursery.cancel_scope.cancel()
        if not outcome:
            return None
        if isinstance(outcome[0], EideticaError):
            raise outcome[0]
        return outcome[0]

    async def _trees_added(self, names: frozenset[str]) -> None:
        """Return once a tree not in ``names`` is related to the peer. A relationship
        is written to the node's sync tree, so the trees are looked at whenever this
        node stores entries, and every ``trees_poll`` seconds besides (the store
        comes just before the relationship is taken up)."""
        while True:
            version = self._instance.version
            with trio.move_on_after(self._config.trees_poll):
                await self._instance.changed(version)
            if set(self._trees()) - names:
                return

    async def _answered(self, answer: Changed, names: frozenset[str], began: float) -> None:
        """Take in what the peer reported: the entries it sent, then a sync of the
        trees whose tips we still lack; and set the wait before the next round."""
        reported = {item.tree: item for item in answer.trees if item.tree in names}
        if not reported:
            if answer.trees:
                self._back_off("it reported only trees we did not watch")
            elif trio.current_time() - began < self._config.quick:
                self._back_off("it answered at once, with nothing")
            else:
                self._pause = 0.0  # the hold ended: watch again
            return
        try:
            for news in reported.values():
                if news.entries:
                    await self._receive(news.tree, news.entries)
        except EideticaError as exc:
            self._back_off(f"its entries could not be stored: {exc}")
            return
        behind = tuple(sorted(tree for tree, news in reported.items() if self._lacks(news.tips)))
        if behind and not await self._sync(behind):
            return
        for tree, news in reported.items():
            self._heard[tree] = frozenset(news.tips)
        lacking = [tree for tree, news in reported.items() if self._lacks(news.tips)]
        if lacking:
            self._back_off(f"we still lack tips it reported, of {len(lacking)} trees")
        else:
            self._pause = 0.0

    def _lacks(self, tips: Collection[str]) -> bool:
        """Whether this node lacks one of ``tips``."""
        return len(self._instance.backend.has(tips)) != len(set(tips))

    async def _receive(self, tree: str, entries: Sequence[bytes]) -> None:
        """Store entries the peer sent with its answer, as a push's, and have the
        supervisor offer the new ones to the tree's other peers."""
        peer = self._link.peer_key or ""
        receipt = await self._instance.receive(tree, entries, source=peer)
        if receipt.stored:
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self._report.send_nowait(cmd.EntriesReceived(tree, tuple(receipt.stored), peer))

    async def _sync(self, trees: tuple[str, ...]) -> bool:
        """Have the supervisor sync ``trees`` with the peer; whether it went through."""
        reply = Reply[None]()
        peer = self._link.peer_key or ""
        with trio.move_on_after(self._config.sync_within):
            try:
                await self._report.send(cmd.TreesChanged(peer, trees, reply))
                await reply.wait()
                return True
            except (EideticaError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._back_off(f"the sync of {len(trees)} trees it reported failed: {exc}")
                return False
        self._back_off(f"the sync of {len(trees)} trees took over {self._config.sync_within} s")
        return False

    async def _handshake(self) -> None:
        """Prove our key to the peer again (it forgot our session), once per streak."""
        self._handshaken = True
        try:
            await self._link.handshake(self._instance, expected_key=self._link.peer_key)
        except EideticaError as exc:
            self._back_off(f"a fresh handshake failed: {exc}")
        else:
            self._pause = 0.0

    def _back_off(self, reason: str) -> None:
        """Wait longer before the next round (the first failure of a streak is logged)."""
        config = self._config
        if not self._pause:
            log.info(
                "watch on peer %s at %s: %s; watching again in %.0f s or more",
                self._link.peer_key,
                self._link.address,
                reason,
                config.backoff_min,
            )
        doubled = max(self._pause * 2, config.backoff_min)
        self._pause = min(doubled, config.backoff_max) * (1 + self._rng.uniform(0, 0.1))
