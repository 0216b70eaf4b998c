"""Checking entries against the tree they join, before any of them is stored.

:func:`validate_entry` checked what an entry says about itself. Here it meets the
tree: its parents must be stored or come earlier in the same batch, its height must
follow from theirs, its store parents must be writes to the same store, its data must
decode, and its author must hold the permission its write needs under the settings as
of its parents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eidetica.errors import (
    InvalidKey,
    InvalidPermission,
    InvalidSettings,
    MissingParents,
    ShapeError,
    WrongTree,
)
from eidetica.protocol.auth import check_auth_map, check_write
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.backend import Backend, EntryMeta, Record
from eidetica.storage.crdt import Document, apply_ops, decode_ops
from eidetica.storage.settings import SettingsIndex


class BatchVerifier:
    """Verifies one batch in parents-first order, remembering what it accepted."""

    def __init__(self, backend: Backend, settings: SettingsIndex) -> None:
        self._backend = backend
        self._settings = settings
        self._accepted: dict[str, Record] = {}
        self._metas: dict[str, EntryMeta] = {}

    def verify(self, entries: Iterable[Entry], tree: str | None = None) -> list[Record]:
        """Records for the entries not yet stored, parents first; raise on the first
        entry that fails, in which case none of them may be stored."""
        unique = {entry.id: entry for entry in entries}
        stored = self._backend.has(unique)
        fresh = sorted((e for i, e in unique.items() if i not in stored), key=lambda e: e.key)
        return [self.check(entry, tree) for entry in fresh]

    def check(self, entry: Entry, tree: str | None = None) -> Record:
        """The record for one entry whose parents are stored or already accepted."""
        if tree is not None and entry.tree_id != tree:
            raise WrongTree(f"entry {entry.id} belongs to tree {entry.tree_id}, not {tree}")
        changes_settings = entry.store(SETTINGS_STORE) is not None
        if entry.is_root:
            tips: tuple[str, ...] = ()
            governing: Document = {}
        else:
            parents = self._parent_metas(entry, entry.parents, "parents")
            expected = max(meta.height for meta in parents) + 1
            if entry.height != expected:
                raise ShapeError(f"entry {entry.id} has height {entry.height}, not {expected}")
            tips = self._settings.tips_as_of((m.settings_head for m in parents), self.lookup)
            governing = self._settings.state(tips, self.lookup)
            check_write(governing, entry.author, changes_settings=changes_settings)
        for write in entry.stores:
            ops = decode_ops(write.data)
            if write.name == SETTINGS_STORE:
                if write.parents != tips:
                    raise ShapeError(f"entry {entry.id} must name the settings tips {tips}")
                updated = apply_ops(governing, ops, owned={})
                try:
                    check_auth_map(updated)
                except (InvalidKey, InvalidPermission) as exc:
                    raise InvalidSettings(f"entry {entry.id} sets bad settings: {exc}") from exc
                if entry.is_root:  # a root is governed by the settings it creates
                    check_write(updated, entry.author, changes_settings=True)
            elif write.parents:
                for meta in self._parent_metas(entry, write.parents, f"{write.name} parents"):
                    if write.name not in meta.stores or meta.height >= entry.height:
                        raise ShapeError(f"{meta.id} cannot be a {write.name!r} store parent")
        head = (entry.id,) if changes_settings else tips
        record = Record(entry, head)
        self._accepted[entry.id] = record
        self._metas[entry.id] = EntryMeta.of(record)
        return record

    def _parent_metas(self, entry: Entry, ids: Sequence[str], what: str) -> list[EntryMeta]:
        metas = [self._metas[i] for i in ids if i in self._metas]
        if len(metas) < len(ids):
            metas += self._backend.meta(i for i in ids if i not in self._metas).values()
        if len(metas) < len(ids):
            missing = frozenset(ids) - {meta.id for meta in metas}
            raise MissingParents(f"entry {entry.id} lacks {what} {sorted(missing)}", missing)
        for meta in metas:
            if meta.tree != entry.tree_id:
                raise WrongTree(f"entry {entry.id} names {meta.id} of another tree")
        return metas

    def lookup(self, entry_id: str) -> Entry:
        """An entry accepted in this batch, or a stored one."""
        record = self._accepted.get(entry_id)
        if record is not None:
            return record.entry
        entry = self._backend.get(entry_id)
        if entry is None:
            raise MissingParents(f"settings entry {entry_id} is not stored", frozenset())
        return entry
