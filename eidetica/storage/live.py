"""What a node offers when it syncs a tree: its entries less the dead ones.

An entry is *dead* when it does not count (a revocation voided it: see
:mod:`eidetica.storage.revocation`) and no entry that counts builds on it, however
far down. A node that knows of the revocation refuses such an entry when offered it
(``Instance._without_spam``), and every node that syncs the tree comes to know of the
revocation. So offering it only wastes the round: the peer refuses it at every
sync, and the two nodes never hold the same tips, never look "in step" and keep
resending. (The simulator found this: seeds 2 and 32 of issue 13.)

So the node keeps a dead entry stored (nothing stored is lost, and an entry that
counts may later build on it, which brings it and its ancestors back) but leaves it
out of what it syncs: the tips it names, the entries it walks and sends, the tips
its status compares. :class:`Liveness` works that out per tree and keeps it until
the tree's tips move. Every child of a dead entry is dead too (it cannot count, or
its parent would have a descendant that counts), so a tree has dead entries only if
one of its tips is dead: while every tip counts, which is the rule, the answer costs
one verdict on the tips alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from eidetica.storage.backend import Backend
from eidetica.storage.judge import Judge

MAX_TREES = 256
"""Trees whose answer is kept at once; the oldest goes beyond."""


@dataclass(frozen=True, slots=True)
class Live:
    """One tree's dead entries and the tips of the rest, as of its tips ``at``."""

    at: tuple[str, ...]
    dead: frozenset[str]
    tips: tuple[str, ...]


class Liveness:
    """Dead entries and live tips of a backend's trees, kept per tree until its tips
    move (a new entry is always a new tip, so any store moves them)."""

    def __init__(self, backend: Backend, judge: Judge) -> None:
        self._backend = backend
        self._judge = judge
        self._kept: dict[str, Live] = {}

    def of(self, tree: str) -> Live:
        at = tuple(self._backend.tips(tree))
        kept = self._kept.get(tree)
        if kept is not None and kept.at == at:
            return kept
        live = self._work_out(tree, at)
        self._kept.pop(tree, None)
        self._kept[tree] = live
        if len(self._kept) > MAX_TREES:
            del self._kept[next(iter(self._kept))]
        return live

    def _work_out(self, tree: str, at: tuple[str, ...]) -> Live:
        held = [entry for entry in map(self._backend.get, at) if entry is not None]
        if all(self._judge.counting(tree, held)):
            return Live(at, frozenset(), at)
        voided = self._judge.voided(tree)
        # Every descendant of a voided entry, and every child of its parents, lies
        # above the lowest of those parents: walk only that part, newest first.
        metas = self._backend.meta(voided)
        parents = self._backend.meta({p for m in metas.values() for p in m.parents})
        low = min(m.height for m in (parents or metas).values())
        ids = list(self._backend.tree_ids(tree, low))
        below = self._backend.meta(ids)
        needed: set[str] = set()
        dead: set[str] = set()
        for entry_id in reversed(ids):
            if entry_id in voided and entry_id not in needed:
                dead.add(entry_id)
            else:
                needed.update(below[entry_id].parents)
        if not dead:
            return Live(at, frozenset(), at)
        uncovered = {p for d in dead for p in below[d].parents} - dead - needed
        tips = tuple(sorted((set(at) - dead) | uncovered))
        return Live(at, frozenset(dead), tips)
