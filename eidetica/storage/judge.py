"""Which stored entries of a tree count: verdicts cached by settings tips.

:class:`~eidetica.storage.revocation.Verdict` decides from the settings entries
alone; the judge gives it what it needs from storage (entries by id, each entry's
settings tips, and the ancestry of a revocation) and keeps what is costly to rebuild.
A tree that never revoked anything costs one lookup of its settings tips per question.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

from eidetica.errors import StorageError
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.backend import Backend
from eidetica.storage.revocation import Revocation, Verdict
from eidetica.storage.settings import Lookup

MAX_VERDICTS = 64
MAX_LABELLINGS = 4
"""Sets of revocations whose ancestry is kept, to tell an entry a revocation builds on
from a concurrent one; each costs an int per entry below its revocations."""
CHUNK = 512


class Judge:
    """Verdicts for one backend's trees."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._verdicts: OrderedDict[frozenset[str], Verdict] = OrderedDict()
        self._labels: OrderedDict[tuple[str, ...], dict[str, int]] = OrderedDict()

    def verdict(self, tips: Iterable[str], lookup: Lookup) -> Verdict:
        """The verdict on the settings entries at and below ``tips``."""
        key = frozenset(tips)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = Verdict(key, lookup)
            if len(self._verdicts) > MAX_VERDICTS:
                self._verdicts.popitem(last=False)
        else:
            self._verdicts.move_to_end(key)
        return verdict

    def assume(self, tips: Iterable[str], verdict: Verdict) -> None:
        """Take ``verdict`` as the one for ``tips``, when the caller knows it for less
        than building it would cost."""
        self._verdicts[frozenset(tips)] = verdict
        if len(self._verdicts) > MAX_VERDICTS:
            self._verdicts.popitem(last=False)

    def of_tree(self, tree: str) -> Verdict:
        """The verdict on every settings entry of ``tree`` that is stored."""
        return self.verdict(self._backend.store_tips(tree, SETTINGS_STORE), self._lookup)

    def counting(self, tree: str, entries: Sequence[Entry]) -> list[bool]:
        """For each stored entry of ``tree``, whether it counts."""
        verdict = self.of_tree(tree)
        if verdict.trivial:
            return [True] * len(entries)
        return [reason is None for _, reason in self._reasons(verdict, entries)]

    def voided(self, tree: str) -> dict[str, str]:
        """Every stored entry of ``tree`` that does not count, with the reason."""
        verdict = self.of_tree(tree)
        if verdict.trivial:
            return {}
        found: dict[str, str] = {}
        for chunk in _chunks(self._backend.tree_entries(tree)):
            found.update((e.id, r) for e, r in self._reasons(verdict, chunk) if r is not None)
        return found

    def is_ancestor(self, verdict: Verdict, entry: Entry, of: str) -> bool:
        """Whether stored ``entry`` is an ancestor of ``of``, one of the verdict's
        revocations."""
        key = tuple(r.id for r in verdict.revocations)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = self._label(verdict.revocations)
            if len(self._labels) > MAX_LABELLINGS:
                self._labels.popitem(last=False)
        bit = key.index(of)
        return bool(labels.get(entry.id, 0) >> bit & 1)

    def _label(self, revocations: Sequence[Revocation]) -> dict[str, int]:
        """For every entry below some revocation, a bit set of the revocations it is an
        ancestor of. One walk down from all of them at once, a height at a time, so
        that every child is labelled before its parents: many revocations cost one
        walk of the history, not one each."""
        labels = {r.id: 1 << i for i, r in enumerate(revocations)}
        metas = self._backend.meta(labels)
        heap = [(-meta.height, entry_id) for entry_id, meta in metas.items()]
        heapq.heapify(heap)
        while heap:
            height = heap[0][0]
            level = []
            while heap and heap[0][0] == height:
                level.append(heapq.heappop(heap)[1])
            found = set()
            for entry_id in level:
                for parent in metas.pop(entry_id).parents:
                    labels[parent] = labels.get(parent, 0) | labels[entry_id]
                    if parent not in metas:
                        found.add(parent)
            for parent, meta in self._backend.meta(found).items():
                metas[parent] = meta
                heapq.heappush(heap, (-meta.height, parent))
        return labels

    def _reasons(
        self, verdict: Verdict, entries: Sequence[Entry]
    ) -> Iterator[tuple[Entry, str | None]]:
        suspects = {entry.id for entry in entries if verdict.suspect(entry)}
        metas = self._backend.meta(suspects) if suspects else {}
        for entry in entries:
            if entry.id not in suspects:
                yield entry, None
                continue
            meta = metas.get(entry.id)
            head = meta.settings_head if meta is not None else ()
            yield entry, verdict.reason(entry, head, partial(self.is_ancestor, verdict))

    def _lookup(self, entry_id: str) -> Entry:
        entry = self._backend.get(entry_id)
        if entry is None:
            raise StorageError(f"settings entry {entry_id} is named but not stored")
        return entry


def _chunks(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
