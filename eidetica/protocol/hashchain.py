"""Authenticating a batch of entries through its hash chains: one signature check per
author's run, not one per entry.

An entry's signature covers the ids it names (its parents and store parents), and an
id is the SHA-256 of an entry's exact bytes, signature included. So an entry whose
signature verifies under key K commits K to the exact bytes of every entry it names;
when a named entry's author is K too, K vouches for it, whatever its own signature
field holds. The rule (``docs/protocol.md``, section 5, "Authentic entries"):

    An entry is **authentic** if its own signature verifies, or if an authentic entry
    by the same author key names it as a parent or store parent.

Same key means the same ``author`` string, which for a valid key is one encoding of
the key's bytes; a name never vouches. The authentic entries of a set are therefore
the closure, under "named by a same-author entry", of those whose signatures verify:
a set fixed by the entries alone, whatever order they are checked in.

Within a batch only the *heads* need a signature check: entries that no same-author
entry of the batch names. A pull's page of one author's run (1,024 entries, each the
child of the one before) costs one check. Entries outside the batch vouch too: one
held in the holding area or already stored is authentic, so the caller names the
batch's entries it vouches for (:meth:`Authentication.vouch`), which only matters for
those whose own check fails.

:class:`Authentication` is a small state machine, so the checks may run anywhere (in
worker threads, a slice each): :meth:`~Authentication.to_check` names the entries the
next round must check, :meth:`~Authentication.checked` takes the results. Rounds: the
heads first; then the entries that only failed entries name (so a forged head over a
real run costs two checks); after :data:`NARROW_ROUNDS`, every entry still unresolved.
No entry is checked twice, so a batch never costs more checks than checking each of
its entries would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from eidetica.errors import BadSignature
from eidetica.protocol.entry import Entry, check_signature

NARROW_ROUNDS = 2
"""Rounds that check only the entries no unresolved entry names; the next checks all
that are left, so a batch takes at most this many rounds plus one."""


_VERIFIED = "signature_verified"
"""Where an entry object notes that its own signature was seen to verify."""


def mark_verified(entry: Entry) -> None:
    """Note on ``entry`` that its own signature verifies (it travels with the entry,
    through the holding area too)."""
    entry.__dict__[_VERIFIED] = True


def signature_verified(entry: Entry) -> bool:
    """Whether ``entry``'s own signature was seen to verify."""
    return bool(entry.__dict__.get(_VERIFIED, False))


def unauthentic(entries: Sequence[Entry]) -> dict[str, BadSignature]:
    """Of ``entries``, about to be stored together (parents first), those that are not
    authentic within them: their own signature fails and no authentic entry of theirs
    by the same author names them. With their errors.

    A batch was authenticated as it arrived, but an entry vouched for only by others
    of its batch (or by held ones) is authentic only if one of those is stored with
    it: a voucher that the tree then refused, or that still waits, vouches for
    nothing stored. So storage confirms it: children first, an entry counts if its
    own signature was seen to verify, or a same-author entry counted here names it,
    and otherwise its signature is checked now. In a batch with nothing refused this
    checks nothing: each author's heads were checked on arrival.
    """
    by_id = {entry.id: entry for entry in entries}
    namers: dict[str, list[str]] = {}
    for entry in entries:
        for other in set(named(entry)):
            if other in by_id and by_id[other].author == entry.author:
                namers.setdefault(other, []).append(entry.id)
    authentic: set[str] = set()
    failed: dict[str, BadSignature] = {}
    for entry in reversed(entries):
        if signature_verified(entry) or any(n in authentic for n in namers.get(entry.id, ())):
            authentic.add(entry.id)
            continue
        try:
            check_signature(entry)
        except BadSignature as exc:
            failed[entry.id] = exc
            continue
        mark_verified(entry)
        authentic.add(entry.id)
    return failed


def named(entry: Entry) -> Iterator[str]:
    """The ids ``entry``'s signature commits to: its parents and store parents."""
    yield from entry.parents
    for write in entry.stores:
        yield from write.parents


class Authentication:
    """Which entries of a batch are authentic, with as few signature checks as the
    batch's same-author chains allow.

    Each entry is *unresolved*, *authentic* or *failed* (its own check failed and no
    authentic same-author entry names it, so far). Vouching moves an entry and every
    same-author entry it names, transitively, to authentic, failed or not.
    """

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            self._entries.setdefault(entry.id, entry)
        self._names: dict[str, list[str]] = {}
        """For each entry, the same-author entries of the batch it names."""
        self._named_by: dict[str, list[str]] = {}
        """For each entry, the same-author entries of the batch that name it."""
        for entry in self._entries.values():
            same = [
                other
                for other in set(named(entry))
                if other in self._entries and self._entries[other].author == entry.author
            ]
            if same:
                self._names[entry.id] = same
                for other in same:
                    self._named_by.setdefault(other, []).append(entry.id)
        self._authentic: set[str] = set()
        self._failed: dict[str, BadSignature] = {}
        self._rounds = 0
        self.checks = 0
        """Signatures checked so far."""

    def to_check(self) -> list[Entry]:
        """The entries whose signatures the next round checks, in the batch's order;
        empty once every entry is resolved."""
        unresolved = [
            entry
            for entry_id, entry in self._entries.items()
            if entry_id not in self._authentic and entry_id not in self._failed
        ]
        if not unresolved:
            return []
        self._rounds += 1
        if self._rounds > NARROW_ROUNDS:
            return unresolved
        # An unresolved entry's vouchers are failed or unresolved (an authentic one
        # would have vouched for it): the heads are those named by failed ones only.
        heads = [
            entry
            for entry in unresolved
            if all(voucher in self._failed for voucher in self._named_by.get(entry.id, ()))
        ]
        return heads or unresolved  # none only if the names made a cycle, which ids cannot

    def checked(self, results: Iterable[tuple[Entry, BadSignature | None]]) -> None:
        """Take a round's results: each entry checked, and its error (None: it verified)."""
        for entry, error in results:
            self.checks += 1
            if error is None:
                mark_verified(entry)
                self._vouch_from(entry.id)
            elif entry.id not in self._authentic:
                self._failed[entry.id] = error

    def vouch(self, ids: Iterable[str]) -> None:
        """Entries of the batch that something outside it vouches for (an authentic
        same-author entry held or stored names them; or they are stored already)."""
        for entry_id in ids:
            if entry_id in self._entries:
                self._vouch_from(entry_id)

    @property
    def failed(self) -> dict[str, BadSignature]:
        """Entries whose own check failed and that nothing authentic vouches for (yet),
        with the error."""
        return dict(self._failed)

    def failed_entries(self) -> list[Entry]:
        """The entries of :attr:`failed`."""
        return [self._entries[entry_id] for entry_id in self._failed]

    def is_authentic(self, entry_id: str) -> bool:
        return entry_id in self._authentic

    def _vouch_from(self, entry_id: str) -> None:
        """Mark ``entry_id`` authentic, and every same-author entry it names, on down."""
        stack = [entry_id]
        while stack:
            current = stack.pop()
            if current in self._authentic:
                continue
            self._authentic.add(current)
            self._failed.pop(current, None)
            stack.extend(self._names.get(current, ()))
