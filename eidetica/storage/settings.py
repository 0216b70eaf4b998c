"""A tree's settings as of any point in its history.

Settings live in the reserved ``_settings`` document store. Which settings govern an
entry is decided by its parents: the settings entries in force at an entry (its
"settings tips") are the newest settings entries among its ancestors. Each stored
entry keeps its *settings head* (itself if it changes settings, else its settings
tips), so finding an entry's settings tips needs only its parents' heads, never a walk
of the history. A settings entry must name exactly those tips as its ``_settings``
store parents, so the settings DAG mirrors the tree's ancestry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.crdt import Document, apply_ops, copy_value, decode_ops

Lookup = Callable[[str], Entry]
"""Finds an entry by id among stored ones and those of the batch being verified."""


def settings_parents(entry: Entry) -> tuple[str, ...]:
    """The ``_settings`` store parents of a settings entry (empty for any other)."""
    write = entry.store(SETTINGS_STORE)
    return write.parents if write is not None else ()


def settings_ops(entry: Entry) -> Document:
    """Apply this entry's settings operations to an empty document (its settings delta)."""
    state: Document = {}
    write = entry.store(SETTINGS_STORE)
    if write is not None:
        apply_ops(state, decode_ops(write.data))
    return state


class SettingsIndex:
    """Caches settings ancestries and states; both are immutable facts about ids."""

    def __init__(self) -> None:
        self._ancestors: dict[str, frozenset[str]] = {}
        self._states: dict[frozenset[str], Document] = {}

    def tips_as_of(self, heads: Iterable[tuple[str, ...]], lookup: Lookup) -> tuple[str, ...]:
        """The settings tips of an entry whose parents have these settings heads."""
        candidates = set().union(*heads)
        if len(candidates) > 1:
            covered = set().union(*(self.ancestors(c, lookup) for c in candidates))
            candidates -= covered
        return tuple(sorted(candidates))

    def ancestors(self, settings_id: str, lookup: Lookup) -> frozenset[str]:
        """Every settings entry older than ``settings_id`` in the settings DAG."""
        stack = [settings_id]
        while stack:
            current = stack[-1]
            if current in self._ancestors:
                stack.pop()
                continue
            parents = settings_parents(lookup(current))
            pending = [p for p in parents if p not in self._ancestors]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self._ancestors[current] = frozenset(parents).union(
                *(self._ancestors[p] for p in parents)
            )
        return self._ancestors[settings_id]

    def state(self, tips: tuple[str, ...], lookup: Lookup) -> Document:
        """The settings document in force at these settings tips (do not mutate it)."""
        key = frozenset(tips)
        cached = self._states.get(key)
        if cached is not None:
            return cached
        state = self._extend_parent_state(tips, lookup)
        if state is None:
            members = key.union(*(self.ancestors(tip, lookup) for tip in tips))
            state = {}
            for entry in sorted((lookup(i) for i in members), key=lambda e: e.key):
                apply_ops(state, decode_ops(_settings_data(entry)))
        self._states[key] = state
        return state

    def _extend_parent_state(self, tips: tuple[str, ...], lookup: Lookup) -> Document | None:
        """On a linear settings history, the parent's state plus one entry's operations."""
        if len(tips) != 1:
            return None
        entry = lookup(tips[0])
        parents = settings_parents(entry)
        parent_state = self._states.get(frozenset(parents)) if parents else {}
        if parent_state is None:
            return None
        state: Document = copy_value(parent_state)
        apply_ops(state, decode_ops(_settings_data(entry)))
        return state


def _settings_data(entry: Entry) -> bytes:
    write = entry.store(SETTINGS_STORE)
    assert write is not None, "settings tips are always settings entries"
    return write.data
