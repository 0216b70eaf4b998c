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

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from eidetica.protocol.auth import check_write
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.crdt import Document, apply_ops, decode_ops

MAX_STATES = 256
"""Settings states kept; older ones are refolded when asked for again."""
MAX_WRITERS = 4096
"""Writers remembered as allowed (see :meth:`SettingsIndex.check_write`); past this
many the oldest is forgotten and checked again when it next writes."""

Lookup = Callable[[str], Entry]
"""Finds an entry by id among stored ones and those of the batch being verified."""


def settings_parents(entry: Entry) -> tuple[str, ...]:
    """The ``_settings`` store parents of a settings entry (empty for any other)."""
    write = entry.store(SETTINGS_STORE)
    return write.parents if write is not None else ()


def settings_members(tips: Iterable[str], lookup: Lookup) -> list[Entry]:
    """The settings entries at and below ``tips``."""
    found: dict[str, Entry] = {}
    stack = list(tips)
    while stack:
        current = stack.pop()
        if current not in found:
            entry = found[current] = lookup(current)
            stack.extend(settings_parents(entry))
    return list(found.values())


class SettingsIndex:
    """Settings states by settings tips, in a bounded cache.

    Neighbouring states share structure (copy-on-write, as document folds do), so a
    long settings history costs memory for what changed, not a copy per change.
    Ancestry in the settings DAG is answered by walks that stop at the height of the
    entry asked about, never by stored closures.
    """

    def __init__(self, max_states: int = MAX_STATES, max_writers: int = MAX_WRITERS) -> None:
        self._states: OrderedDict[frozenset[str], Document] = OrderedDict()
        self._max_states = max_states
        self._writers: dict[tuple[tuple[str, ...], str, bool], None] = {}
        self._max_writers = max_writers

    def tips_as_of(self, heads: Sequence[tuple[str, ...]], lookup: Lookup) -> tuple[str, ...]:
        """The settings tips of an entry whose parents have these settings heads."""
        first = heads[0] if heads else ()
        if len(first) == 1 and all(head == first for head in heads):
            return first  # the common case, one settings tip shared by every parent
        candidates = set().union(*heads)
        if len(candidates) > 1:
            candidates = {
                c for c in candidates if not any(self._precedes(c, d, lookup) for d in candidates)
            }
        return tuple(sorted(candidates))

    def _precedes(self, older: str, newer: str, lookup: Lookup) -> bool:
        """Whether ``older`` is a settings ancestor of ``newer``."""
        if older == newer:
            return False
        floor = lookup(older).height
        seen: set[str] = set()
        stack = list(settings_parents(lookup(newer)))
        while stack:
            current = stack.pop()
            if current == older:
                return True
            if current in seen:
                continue
            seen.add(current)
            entry = lookup(current)
            if entry.height > floor:
                stack.extend(settings_parents(entry))
        return False

    def state(self, tips: tuple[str, ...], lookup: Lookup) -> Document:
        """The settings document in force at these settings tips (do not mutate it)."""
        key = frozenset(tips)
        cached = self._states.get(key)
        if cached is not None:
            self._states.move_to_end(key)
            return cached
        state = self._extend_parent_state(tips, lookup)
        if state is None:
            state = {}
            for entry in sorted(settings_members(tips, lookup), key=lambda e: e.key):
                state = apply_ops(state, decode_ops(_settings_data(entry)))
        self._states[key] = state
        if len(self._states) > self._max_states:
            self._states.popitem(last=False)
        return state

    def check_write(
        self, tips: tuple[str, ...], author: str, *, changes_settings: bool, lookup: Lookup
    ) -> Document:
        """The settings at ``tips``, once ``author`` is found to hold there the
        permission its write needs (admin to change settings, else write); raise
        :class:`~eidetica.errors.PermissionDenied` if it does not.

        An allowed writer is remembered with the tips: the settings at given tips
        never change (ids name their content), so neither does the answer, and a
        writer asks it again at every commit until the settings change. A refusal is
        not remembered. Whether the settings at ``tips`` are the ones that count is
        the caller's to know (they are where nothing is voided).
        """
        state = self.state(tips, lookup)
        writer = (tips, author, changes_settings)
        if writer not in self._writers:
            check_write(state, author, changes_settings=changes_settings)
            self._writers[writer] = None
            if len(self._writers) > self._max_writers:
                del self._writers[next(iter(self._writers))]
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
        return apply_ops(parent_state, decode_ops(_settings_data(entry)), owned={})


def _settings_data(entry: Entry) -> bytes:
    write = entry.store(SETTINGS_STORE)
    assert write is not None, "settings tips are always settings entries"
    return write.data
