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
concurrent entries only of keys *junior* to its author: the tree's owner (the root's
author) is senior to everyone, and any other key ranks by the first settings entry,
in (height, id) order, that gave it any permission (a higher permission first within
one entry, then the key itself). A key is always junior to whoever first granted it,
so a writer's revocation always holds, and voiding flows one way: what counts is a
function of the DAG alone, the same on every node whatever the order of arrival.

The owner keeps admin for good (the verifier refuses any entry that lowers it), so no
demoted key can lock the owner out.

Entries that do not count stay stored: others may build on them, and a node must hold
every parent to converge. They are left out of every document fold, settings included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from eidetica.protocol.auth import Permission, permission_of
from eidetica.protocol.entry import SETTINGS_STORE, Entry
from eidetica.storage.crdt import Document, apply_ops, decode_ops
from eidetica.storage.settings import Lookup, settings_members, settings_parents

Fingerprint = tuple[frozenset[str], tuple[str, ...]]
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
        self.members = sorted(settings_members(tips, lookup), key=lambda e: e.key)
        self._index = {entry.id: i for i, entry in enumerate(self.members)}
        self._below = self._closures()
        self.owner = self.members[0].author if self.members else ""
        self._ranks: dict[str, tuple[int, int, str]] = {}
        self._plain: dict[int, Document] = {}
        self.voided: dict[str, str] = {}
        self._folds: dict[int, Document] = {}
        self.revocations: list[Revocation] = []
        self._lowered: dict[str, bool] = {}
        self._settle()

    @property
    def trivial(self) -> bool:
        """Whether every entry counts that the ordinary permission check let in."""
        return not self.voided and not self.revocations

    @property
    def fingerprint(self) -> Fingerprint:
        """Changes exactly when what counts may have changed."""
        return frozenset(self.voided), tuple(r.id for r in self.revocations)

    def state(self, tips: Iterable[str]) -> Document:
        """The settings that count at these settings tips (do not mutate it)."""
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
                r.lowers(entry.author, Permission.WRITE) for r in self.revocations
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
            held = permission_of(self._fold(mask, self.voided), entry.author) or 0
            if held < Permission.WRITE:
                return f"{_short(entry.author)} holds no write under the settings that count"
        for revocation in self.revocations:
            if (
                revocation.lowers(entry.author, Permission.WRITE)
                and self._senior(revocation.author, entry.author)
                and not mask >> revocation.index & 1
                and not (entry.height < revocation.height and is_ancestor(entry, revocation.id))
            ):
                return _revoked(entry.author, revocation.id)
        return None

    def _settle(self) -> None:
        """Judge every settings entry until nothing changes. Voiding flows from senior to
        junior keys and along ancestry, so each round settles at least one more step of
        that order and the loop ends within one round per entry."""
        for _ in range(len(self.members) + 1):
            self._folds.clear()
            self.revocations = self._find_revocations()
            judged = {
                entry.id: reason
                for i, entry in enumerate(self.members[1:], start=1)
                if (reason := self._judge(i, entry)) is not None
            }
            if judged == self.voided:
                break
            self.voided = judged
        self._folds.clear()
        self.revocations = self._find_revocations()

    def _judge(self, index: int, entry: Entry) -> str | None:
        before = self._fold(self._parents_mask(entry), self.voided)
        if (permission_of(before, entry.author) or 0) < Permission.ADMIN:
            return f"{_short(entry.author)} is not admin under the settings that count"
        for revocation in self.revocations:
            if (
                revocation.index != index
                and revocation.lowers(entry.author, Permission.ADMIN)
                and self._senior(revocation.author, entry.author)
                and self._concurrent(revocation.index, index)
            ):
                return _revoked(entry.author, revocation.id)
        return None

    def _find_revocations(self) -> list[Revocation]:
        found = []
        for i, entry in enumerate(self.members[1:], start=1):
            if entry.id in self.voided:
                continue
            before = self._fold(self._parents_mask(entry), self.voided)
            after = apply_ops(before, decode_ops(_settings_data(entry)), owned={})
            revocation = Revocation(entry.id, i, entry.author, entry.height, before, after)
            auth = before.get("auth")
            keys = list(auth) if isinstance(auth, dict) else []
            if any(revocation.lowers(key, Permission.ADMIN + 1) for key in keys):
                found.append(revocation)
        return found

    def _senior(self, key: str, other: str) -> bool:
        return key != other and self._rank(key) < self._rank(other)

    def _rank(self, key: str) -> tuple[int, int, str]:
        """Seniority: lower ranks first. The owner ranks before everyone."""
        rank = self._ranks.get(key)
        if rank is None:
            rank = (len(self.members), 0, key)
            for i in range(len(self.members)):
                held = permission_of(self._plain_at(i), key)
                if held is not None:
                    rank = (-1, 0, key) if key == self.owner else (i, -held, key)
                    break
            self._ranks[key] = rank
        return rank

    def _plain_at(self, index: int) -> Document:
        """The settings at one entry with every entry counted (seniority is static)."""
        state = self._plain.get(index)
        if state is None:
            state = self._plain[index] = self._fold(self._below[index], {}, cache=False)
        return state

    def _fold(self, mask: int, voided: dict[str, str], *, cache: bool = True) -> Document:
        state = self._folds.get(mask) if cache else None
        if state is None:
            state = {}
            for i in _bits(mask):
                entry = self.members[i]
                if entry.id not in voided:
                    state = apply_ops(state, decode_ops(_settings_data(entry)))
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


def _settings_data(entry: Entry) -> bytes:
    write = entry.store(SETTINGS_STORE)
    assert write is not None, "settings members are always settings entries"
    return write.data


def _short(key: str) -> str:
    return key[:20] + "..."


def _revoked(author: str, revocation: str) -> str:
    return f"{_short(author)} was revoked by {revocation}, which this entry does not build on"
