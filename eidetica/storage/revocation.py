"""Revocation where remove wins: which of a tree's entries count.

A *revocation* is a settings entry that counts and under which some key holds less
permission than under its parents' settings. An entry by that key which is neither
an ancestor nor a descendant of the revocation (it is *concurrent* with it) does not
count. A revoked key can always build on the tips from before its revocation, so
counting such entries would let a revoked writer go on writing, and a demoted admin
undo its demotion, just by choosing old parents.

An entry also does not count when its author lacks the permission it needs under the
settings that count as of its parents: a grant that does not count takes the
grantee's entries with it.

**Seniority decides between admins.** Two admins can revoke each other concurrently;
if each revocation voided the other, neither would hold and a demoted admin could
always cancel its demotion by demoting its demoter in return. So a revocation voids
concurrent entries of a key that was an admin where it was signed only if its author
is *senior* to that key: the tree's owner (the root's author) is senior to everyone,
and any other key ranks by the first settings entry, in (height, id) order, that
granted it a permission by name (a higher permission first within one entry, then
the key itself). A writer or reader cannot revoke anyone back, so any admin's
revocation of one holds.

**One order.** The rules can allow two answers (two revocations each voiding the grant
the other's author needed), so revocations take effect one at a time, the most senior
author's first, and one that took effect is never voided later: what counts is a
function of the DAG alone, the same on every node whatever the order of arrival.

The owner keeps admin for good (the verifier refuses any entry that lowers it), so no
demoted key can lock the owner out.

Entries that do not count stay stored: others may build on them, and a node must hold
every parent to converge. They are left out of every document fold, settings included.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from eidetica.protocol.auth import ANYONE, Permission, granted, permission_of
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.crdt import Document, Op, apply_ops, decode_ops
from eidetica.storage.settings import Lookup, settings_members, settings_parents

Fingerprint = tuple[frozenset[str], tuple[str, ...], tuple[object, ...]]
"""Names what counts in a tree: the voided settings entries and the revocations."""

IsAncestor = Callable[[Entry, str], bool]
"""Whether a stored entry is an ancestor of the entry with the given id."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """A settings entry that counts and lowers some key's permission."""

    id: str
    index: int
    author: str
    height: int
    before: Document
    after: Document

    def lowers(self, key: str, below: int) -> bool:
        """Whether this entry takes ``key`` from at least ``below`` to less than it."""
        held = permission_of(self.before, key) or 0
        left = permission_of(self.after, key) or 0
        return left < held and left < below


class Verdict:
    """What counts among the settings entries at and below some settings tips.

    Built once per set of tips; settings histories are short (grants and
    revocations), so the work here is quadratic in settings entries, never in entries.
    """

    def __init__(self, tips: Iterable[str], lookup: Lookup) -> None:
        self.tips = frozenset(tips)
        self.members = sorted(settings_members(self.tips, lookup), key=lambda e: e.key)
        self._index = {entry.id: i for i, entry in enumerate(self.members)}
        self._below = self._closures()
        self.owner = self.members[0].author if self.members else ""
        self._ranks: dict[str, tuple[int, int, str]] = {}
        self.voided: dict[str, str] = {}
        self._folds: dict[int, Document] = {}
        self.revocations: list[Revocation] = []
        self._lowered: dict[str, bool] = {}
        self._by_key: dict[str, list[Revocation]] = {}
        self._before: list[Document] = []
        self._at: list[Document] = []
        self._plain = self._plain_states()
        if any(lowered_keys(*triple) for triple in self._plain_changes()):
            self._settle()
        else:  # everything counts: the states that count are the plain ones
            self._at = self._plain
            self._before = [self._plain_before(e, self._plain) for e in self.members]

    @classmethod
    def of_history_without_revocations(cls) -> Verdict:
        """The verdict when no settings entry lowers anyone: everything counts."""
        return cls((), _no_lookup)

    def extended(self, entry: Entry) -> Verdict | None:
        """The verdict once ``entry``, a settings entry built on exactly these tips, is
        added; None if it is not. Such an entry is concurrent with no settings entry, so
        it changes no other's standing: it is judged alone, and its revocations added.
        This keeps a long settings history cheap to extend one entry at a time."""
        if not self.members or frozenset(settings_parents(entry)) != self.tips:
            return None
        index, ops = len(self.members), _ops(entry)
        new = copy.copy(self)
        new.tips = frozenset([entry.id])
        new.members = [*self.members, entry]
        new._index = {**self._index, entry.id: index}
        new._below = [*self._below, (1 << (index + 1)) - 1]
        new._plain = [*self._plain, apply_ops(self._tips_state(self._plain, {}), ops, owned={})]
        new._ranks = {key: rank for key, rank in self._ranks.items() if rank[0] < index}
        new._folds, new._lowered = {}, {}
        before = self._tips_state(self._at, self.voided)
        reason = self._not_admin(entry, before)
        after = before if reason else apply_ops(before, ops, owned={})
        new._before, new._at = [*self._before, before], [*self._at, after]
        new.voided = {**self.voided, entry.id: reason} if reason else self.voided
        keys = [] if reason else lowered_keys(before, after, ops)
        if keys:
            revocation = Revocation(entry.id, index, entry.author, entry.height, before, after)
            new.revocations = [*self.revocations, revocation]
            new._by_key = {**self._by_key}
            for key in keys:
                new._by_key[key] = [*self._by_key.get(key, ()), revocation]
        return new

    def _tips_state(self, states: list[Document], voided: dict[str, str]) -> Document:
        """The settings at this verdict's tips, from the states at each entry."""
        if len(self.tips) == 1:
            return states[self._index[next(iter(self.tips))]]
        return self._fold(self._mask(self.tips), voided, cache=False)

    @property
    def trivial(self) -> bool:
        """Whether every entry counts that the ordinary permission check let in."""
        return not self.voided and not self.revocations

    @property
    def fingerprint(self) -> Fingerprint:
        """Changes whenever what counts may have changed: the entries voided, the
        revocations, and the seniority of every key a revocation could void (of every
        key, once one lowers ``*``)."""
        if ANYONE in self._by_key:
            ranks: tuple[object, ...] = tuple(entry.id for entry in self.members)
        else:
            keys = {*self._by_key, *(r.author for r in self.revocations)}
            ranks = tuple((key, self._rank(key)) for key in sorted(keys))
        return frozenset(self.voided), tuple(r.id for r in self.revocations), ranks

    def state(self, tips: Iterable[str]) -> Document:
        """The settings that count at these settings tips (do not mutate it)."""
        tips = list(tips)
        if len(tips) == 1 and tips[0] in self._index and self._at:
            state: Document = self._at[self._index[tips[0]]]
            return state
        return self._fold(self._mask(tips), self.voided)

    def suspect(self, entry: Entry) -> bool:
        """Whether ``entry`` might not count, so :meth:`reason` needs its settings tips.
        Cheap: most entries of most trees are not suspects."""
        if entry.store(SETTINGS_STORE) is not None:
            return entry.id in self.voided
        if self.voided:
            return True
        lowered = self._lowered.get(entry.author)
        if lowered is None:
            lowered = self._lowered[entry.author] = any(
                r.lowers(entry.author, Permission.WRITE) for r in self._revocations_of(entry.author)
            )
        return lowered

    def reason(self, entry: Entry, head: Sequence[str], is_ancestor: IsAncestor) -> str | None:
        """Why ``entry`` (whose parents have settings tips ``head``) does not count,
        or None if it counts."""
        if entry.store(SETTINGS_STORE) is not None:
            return self.voided.get(entry.id)
        if self.trivial:
            return None
        mask = self._mask(head)
        if self.voided:
            held = permission_of(self.state(head), entry.author) or 0
            if held < Permission.WRITE:
                return f"{_short(entry.author)} holds no write under the settings that count"
        for revocation in self._revocations_of(entry.author):
            if (
                revocation.lowers(entry.author, Permission.WRITE)
                and self._may_void(revocation, entry.author)
                and not mask >> revocation.index & 1
                and not (entry.height < revocation.height and is_ancestor(entry, revocation.id))
            ):
                return _revoked(entry.author, revocation.id)
        return None

    def _settle(self) -> None:
        """Let the revocations take effect one at a time, the most senior author's first
        ((rank, height, id) order). One that still counts when its turn comes voids the
        concurrent settings entries of the keys it may void (:meth:`_may_void`), then
        whatever is left without admin by that; a revocation that took effect is never
        voided later. So there is one answer, a function of the DAG, even where the rules
        alone would allow two (each of two revocations voiding the grant the other's
        author needed)."""
        self._count()
        taken: set[str] = set()
        order = sorted(self.revocations, key=lambda r: (self._rank(r.author), r.height, r.id))
        for candidate in order:
            revocation = next((r for r in self.revocations if r.id == candidate.id), None)
            if revocation is None:  # voided, or no longer lowers anyone, by now
                continue
            taken.add(revocation.id)
            voided = {
                entry.id: _revoked(entry.author, revocation.id)
                for i, entry in enumerate(self.members)
                if entry.id not in self.voided
                and entry.id not in taken
                and revocation.lowers(entry.author, Permission.ADMIN)
                and self._may_void(revocation, entry.author)
                and self._concurrent(revocation.index, i)
            }
            if voided:
                self.voided = {**self.voided, **voided}
                self._cascade(taken)

    def _cascade(self, taken: set[str]) -> None:
        """Void what is left without admin under the settings that count, until nothing is."""
        while True:
            self._count()
            lost = {
                entry.id: reason
                for i, entry in enumerate(self.members[1:], start=1)
                if entry.id not in self.voided
                and entry.id not in taken
                and (reason := self._not_admin(entry, self._before[i])) is not None
            }
            if not lost:
                return
            self.voided = {**self.voided, **lost}

    def _may_void(self, revocation: Revocation, key: str) -> bool:
        """Whether ``revocation`` voids ``key``'s concurrent entries: if its author is
        senior to the key, or the key was no admin where the revocation was signed (a
        writer or reader cannot revoke anyone back, so seniority is not needed)."""
        if (permission_of(revocation.before, key) or 0) < Permission.ADMIN:
            return True
        return self._senior(revocation.author, key)

    @staticmethod
    def _not_admin(entry: Entry, before: Document) -> str | None:
        if (permission_of(before, entry.author) or 0) < Permission.ADMIN:
            return f"{_short(entry.author)} is not admin under the settings that count"
        return None

    def _count(self) -> None:
        """With :attr:`voided` as it stands, the settings that count before and at each
        entry, and the revocations among the entries that count."""
        self._folds.clear()
        self._before, self._at, self.revocations, self._by_key = [], [], [], {}
        self._lowered.clear()
        for i, entry in enumerate(self.members):
            before = self._state_before(entry, self._at)
            counts = entry.id not in self.voided
            ops = _ops(entry)
            after = apply_ops(before, ops, owned={}) if counts else before
            self._before.append(before)
            self._at.append(after)
            keys = lowered_keys(before, after, ops) if i > 0 and counts else []
            if keys:
                revocation = Revocation(entry.id, i, entry.author, entry.height, before, after)
                self.revocations.append(revocation)
                for key in keys:
                    self._by_key.setdefault(key, []).append(revocation)

    def _revocations_of(self, key: str) -> list[Revocation]:
        """The revocations that may lower ``key``: of it, or of ``*``."""
        return [*self._by_key.get(key, ()), *self._by_key.get(ANYONE, ())]

    def _state_before(self, entry: Entry, states: list[Document]) -> Document:
        """The settings as of an entry's parents, from ``states`` at each earlier entry:
        on a linear history, the parent's state itself."""
        parents = settings_parents(entry)
        if len(parents) == 1:
            return states[self._index[parents[0]]]
        return self._fold(self._parents_mask(entry), self.voided)

    def _senior(self, key: str, other: str) -> bool:
        return key != other and self._rank(key) < self._rank(other)

    def _rank(self, key: str) -> tuple[int, int, str]:
        """Seniority: lower ranks first. The owner ranks before everyone."""
        rank = self._ranks.get(key)
        if rank is None:
            rank = (len(self.members), 0, key)
            for i in range(len(self.members)):
                held = granted(self._plain[i], key)
                if held is not None:
                    rank = (-1, 0, key) if key == self.owner else (i, -held, key)
                    break
            self._ranks[key] = rank
        return rank

    def _plain_states(self) -> list[Document]:
        """The settings as of each entry, every entry counted: on a linear history each
        is its parent's plus one entry's operations, sharing the rest."""
        states: list[Document] = []
        for entry in self.members:
            states.append(apply_ops(self._plain_before(entry, states), _ops(entry), owned={}))
        return states

    def _plain_before(self, entry: Entry, states: list[Document]) -> Document:
        parents = settings_parents(entry)
        if len(parents) == 1:
            return states[self._index[parents[0]]]
        return self._fold(self._parents_mask(entry), {}, cache=False)

    def _plain_changes(self) -> Iterator[tuple[Document, Document, list[Op]]]:
        for i, entry in enumerate(self.members[1:], start=1):
            yield self._plain_before(entry, self._plain), self._plain[i], _ops(entry)

    def _fold(self, mask: int, voided: dict[str, str], *, cache: bool = True) -> Document:
        state = self._folds.get(mask) if cache else None
        if state is None:
            state = {}
            for i in _bits(mask):
                entry = self.members[i]
                if entry.id not in voided:
                    state = apply_ops(state, _ops(entry))
            if cache:
                self._folds[mask] = state
        return state

    def _closures(self) -> list[int]:
        """Per settings entry, a bit set of itself and its settings ancestors."""
        below: list[int] = []
        for i, entry in enumerate(self.members):
            mask = 1 << i
            for parent in settings_parents(entry):
                mask |= below[self._index[parent]]
            below.append(mask)
        return below

    def _mask(self, tips: Iterable[str]) -> int:
        mask = 0
        for tip in tips:
            index = self._index.get(tip)
            if index is not None:
                mask |= self._below[index]
        return mask

    def _parents_mask(self, entry: Entry) -> int:
        return self._mask(settings_parents(entry))

    def _concurrent(self, one: int, other: int) -> bool:
        return not (self._below[one] >> other & 1 or self._below[other] >> one & 1)


def _bits(mask: int) -> Iterator[int]:
    """Indexes of the set bits, lowest first (key order of the members)."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def lowered_keys(before: Document, after: Document, ops: Sequence[Op]) -> list[str]:
    """The keys of ``before``'s auth map (``*`` included) that hold less in ``after``,
    where ``ops`` took ``before`` to ``after``. Only keys the operations touch are
    looked at, unless one replaces the whole map, so a long auth map costs nothing."""
    auth = before.get("auth")
    if not isinstance(auth, dict):
        return []
    touched: set[str] = set()
    for op in ops:
        if op.path[0] != "auth":
            continue
        if len(op.path) == 1:  # the whole map set or deleted
            touched.update(auth)
        else:
            touched.add(op.path[1])
    touched &= auth.keys()
    return sorted(
        k for k in touched if (permission_of(after, k) or 0) < (permission_of(before, k) or 0)
    )


def _no_lookup(entry_id: str) -> Entry:
    raise AssertionError(f"an empty verdict looks up nothing, asked for {entry_id}")


def _ops(entry: Entry) -> list[Op]:
    return decode_ops(_settings_data(entry))


def _settings_data(entry: Entry) -> bytes:
    write = entry.store(SETTINGS_STORE)
    assert write is not None, "settings members are always settings entries"
    return write.data


def _short(key: str) -> str:
    return key[:20] + "..."


def _revoked(author: str, revocation: str) -> str:
    return f"{_short(author)} was revoked by {revocation}, which this entry does not build on"
