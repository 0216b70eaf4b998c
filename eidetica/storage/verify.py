"""Checking entries against the tree they join, before any of them is stored.

:func:`validate_entry` checked what an entry says about itself. Here it meets the
tree: its parents must be stored or come earlier in the same batch, its height must
follow from theirs, its store parents must be writes to the same store, its data must
decode, and its author must hold the permission its write needs under the settings that
count as of its parents (see :mod:`eidetica.storage.revocation`). The tree's owner
keeps admin for good. An entry that passes but does not count, because a
revocation already known is concurrent with it, is noted in :attr:`BatchVerifier.voided`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eidetica.errors import (
    InvalidKey,
    InvalidPermission,
    InvalidSettings,
    MissingParents,
    PermissionDenied,
    ShapeError,
    WrongTree,
)
from eidetica.protocol.auth import Permission, check_auth_map, check_write, granted
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.backend import Backend, EntryMeta, Record
from eidetica.storage.crdt import Document, Op, apply_ops, decode_ops
from eidetica.storage.judge import Judge
from eidetica.storage.revocation import Verdict, lowered_keys
from eidetica.storage.settings import SettingsIndex

_Governing = tuple[tuple[str, ...], Verdict | None, Document, Document]
"""An entry's settings tips, the tree's verdict, the settings that count at those tips,
and the settings there with every entry counted."""


class BatchVerifier:
    """Verifies one batch in parents-first order, remembering what it accepted."""

    def __init__(
        self, backend: Backend, settings: SettingsIndex, judge: Judge | None = None
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._judge = judge or Judge(backend)
        self._accepted: dict[str, Record] = {}
        self._metas: dict[str, EntryMeta] = {}
        self._tree_tips: dict[str, tuple[str, ...]] = {}
        self.voided: dict[str, str] = {}
        """Entries accepted that do not count, with the reason."""

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
        tips, verdict, governing, plain = self._governing(entry)
        lowers = False
        for write in entry.stores:
            ops = decode_ops(write.data)
            if write.name == SETTINGS_STORE:
                if write.parents != tips:
                    raise ShapeError(f"entry {entry.id} must name the settings tips {tips}")
                lowers = self._check_settings(entry, ops, governing, plain)
            elif write.parents:
                for meta in self._parent_metas(entry, write.parents, f"{write.name} parents"):
                    if write.name not in meta.stores or meta.height >= entry.height:
                        raise ShapeError(f"{meta.id} cannot be a {write.name!r} store parent")
        changes_settings = entry.store(SETTINGS_STORE) is not None
        record = Record(entry, (entry.id,) if changes_settings else tips)
        self._accepted[entry.id] = record
        self._metas[entry.id] = EntryMeta.of(record)
        if changes_settings or verdict is None:
            self._judge_new(record, tips, verdict is None or (verdict.trivial and not lowers))
        else:  # the tree's settings tips, and so its verdict, are as _governing found them
            self._judge_counts(entry, tips, verdict)
        return record

    def _governing(self, entry: Entry) -> _Governing:
        """The entry's settings tips, the tree's verdict, and the settings at those tips
        (counted entries only, and every entry) once its author is found to hold the
        permission it needs under either. A root has no tips and no governing settings."""
        if entry.is_root:
            return (), None, {}, {}
        parents = self._parent_metas(entry, entry.parents, "parents")
        expected = max(meta.height for meta in parents) + 1
        if entry.height != expected:
            raise ShapeError(f"entry {entry.id} has height {entry.height}, not {expected}")
        tips = self._settings.tips_as_of([m.settings_head for m in parents], self.lookup)
        verdict = self._verdict(entry.tree_id)
        changes_settings = entry.store(SETTINGS_STORE) is not None
        if not verdict.trivial:
            plain = self._settings.state(tips, self.lookup)
            governing = verdict.state(tips)
            self._check_permission(entry, changes_settings, governing, plain)
            return tips, verdict, governing, plain
        # Where everything counts, the settings at ``tips`` decide alone, and the
        # settings index remembers who they allow: an author's every entry on the same
        # settings tips, in this batch or a later one, is checked once.
        plain = self._settings.check_write(
            tips, entry.author, changes_settings=changes_settings, lookup=self.lookup
        )
        return tips, verdict, plain, plain

    def _judge_new(self, record: Record, tips: tuple[str, ...], still_trivial: bool) -> None:
        """Move the tree's settings tips past a new settings entry, and note whether the
        new entry counts. A settings entry that lowers nobody, in a tree where
        everything counts, leaves everything counting: no verdict is built for it."""
        entry = record.entry
        if entry.store(SETTINGS_STORE) is not None:
            old_tips = self._tree_settings_tips(entry.tree_id)
            # every old tip that is an ancestor of a new settings entry is one of its
            # settings parents, and nothing stored descends from it
            new_tips = tuple(sorted({*old_tips} - {*tips} | {entry.id}))
            self._tree_tips[entry.tree_id] = new_tips
            if still_trivial:
                self._judge.assume(new_tips, Verdict.of_history_without_revocations())
            elif (grown := self._judge.verdict(old_tips, self.lookup).extended(entry)) is not None:
                self._judge.assume(new_tips, grown)
        self._judge_counts(entry, tips, self._verdict(entry.tree_id))

    def _judge_counts(self, entry: Entry, tips: tuple[str, ...], verdict: Verdict) -> None:
        """Note in :attr:`voided` why a new entry does not count, if it does not."""
        # a new entry is no stored entry's ancestor, so it is never one of a revocation's
        reason = verdict.reason(entry, tips, _never_ancestor)
        if reason is not None:
            self.voided[entry.id] = reason

    def _check_settings(
        self, entry: Entry, ops: list[Op], governing: Document, plain: Document
    ) -> bool:
        """Check a settings write; return whether it lowers anyone's permission."""
        updated = apply_ops(governing, ops, owned={})
        try:
            check_auth_map(updated)
        except (InvalidKey, InvalidPermission) as exc:
            raise InvalidSettings(f"entry {entry.id} sets bad settings: {exc}") from exc
        if entry.is_root:  # a root is governed by the settings it creates
            self._check_owner_kept(entry, updated)
            return False
        for before in (governing, plain):
            self._check_owner_kept(entry, apply_ops(before, ops, owned={}))
        return bool(lowered_keys(governing, updated, ops))

    @staticmethod
    def _check_permission(
        entry: Entry, changes_settings: bool, governing: Document, plain: Document
    ) -> None:
        """The author needs the permission under the settings that count, or under every
        settings entry as of its parents, counted or not: what its author could see where
        it signed. An entry valid only there is stored if needed but does not count."""
        try:
            check_write(governing, entry.author, changes_settings=changes_settings)
        except PermissionDenied:
            check_write(plain, entry.author, changes_settings=changes_settings)

    def _check_owner_kept(self, entry: Entry, after: Document) -> None:
        """The owner (the root's author) is named admin by the root and by every settings
        entry after it: no entry may change that, so the owner is admin in every fold,
        of every entry or only of those that count, and no key, however it was demoted,
        can lock the owner out. An owner whose key is lost moves to a new tree."""
        owner = entry.author if entry.is_root else self.lookup(entry.tree_id).author
        if granted(after, owner) != Permission.ADMIN:
            raise PermissionDenied(f"entry {entry.id} changes the tree owner's admin, which stays")

    def _verdict(self, tree: str) -> Verdict:
        return self._judge.verdict(self._tree_settings_tips(tree), self.lookup)

    def _tree_settings_tips(self, tree: str) -> tuple[str, ...]:
        tips = self._tree_tips.get(tree)
        if tips is None:
            tips = self._tree_tips[tree] = tuple(self._backend.store_tips(tree, SETTINGS_STORE))
        return tips

    def _parent_metas(self, entry: Entry, ids: Sequence[str], what: str) -> list[EntryMeta]:
        accepted = self._metas
        metas: list[EntryMeta] = []
        unknown: list[str] = []
        for entry_id in ids:
            meta = accepted.get(entry_id)
            if meta is None:
                unknown.append(entry_id)
            else:
                metas.append(meta)
        if unknown:
            metas += self._backend.meta(unknown).values()
        if len(metas) < len(ids):
            missing = frozenset(ids) - {meta.id for meta in metas}
            raise MissingParents(f"entry {entry.id} lacks {what} {sorted(missing)}", missing)
        tree = entry.tree_id
        for meta in metas:
            if meta.tree != tree:
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


def _never_ancestor(_entry: Entry, _revocation: str) -> bool:
    return False
