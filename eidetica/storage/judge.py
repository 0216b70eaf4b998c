"""Which stored entries of a tree count: verdicts cached by settings tips.

:class:`~eidetica.storage.revocation.Verdict` decides from the settings entries
alone; the judge gives it what it needs from storage (entries by id, each entry's
settings tips, and the ancestry of a revocation) and keeps what is costly to rebuild.
A tree that never revoked anything costs one lookup of its settings tips per question.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

from eidetica.errors import StorageError
from eidetica.protocol.dagview import walk
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.backend import Backend
from eidetica.storage.revocation import Verdict
from eidetica.storage.settings import Lookup
from eidetica.storage.treeview import TreeView

MAX_VERDICTS = 64
MAX_ANCESTRIES = 8
"""Revocations whose full ancestry is kept, to tell an entry they build on from a
concurrent one; each costs a set of the tree's ids below the revocation."""
CHUNK = 512


class Judge:
    """Verdicts for one backend's trees."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._verdicts: OrderedDict[frozenset[str], Verdict] = OrderedDict()
        self._ancestries: OrderedDict[str, frozenset[str]] = OrderedDict()

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

    def is_ancestor(self, entry: Entry, of: str) -> bool:
        """Whether stored ``entry`` is an ancestor of stored entry ``of``."""
        ancestry = self._ancestries.get(of)
        if ancestry is None:
            view = TreeView(self._backend, entry.tree_id)
            ancestry = self._ancestries[of] = frozenset(walk(view, [of]))
            if len(self._ancestries) > MAX_ANCESTRIES:
                self._ancestries.popitem(last=False)
        return entry.id in ancestry

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
            yield entry, verdict.reason(entry, head, self.is_ancestor)

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
