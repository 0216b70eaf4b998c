"""Authenticating through the hash chain: an entry is authentic if its signature
verifies or an authentic entry by the same key names it. One signature check per
author's run, and forgeries are still refused."""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eidetica.errors import BadSignature
from eidetica.protocol import intake as intake_module
from eidetica.protocol.entry import Entry, StoreWrite, check_signature, create_entry
from eidetica.protocol.hashchain import Authentication, named
from eidetica.protocol.intake import Intake, check, signature_errors
from eidetica.protocol.keys import SigningKey
from eidetica.storage.crdt import SetOp, encode_ops
from tests.builders import child_entry, dag_shapes, root_entry

OWNER = SigningKey(bytes(range(32)))
WRITER = SigningKey(bytes(range(1, 33)))
MALLORY = SigningKey(bytes(range(2, 34)))
ROOT = root_entry(OWNER)
TREE = ROOT.id


def run(key: SigningKey, after: Entry, length: int) -> list[Entry]:
    """``length`` entries by ``key``, each the child of the one before, after ``after``."""
    entries = [after]
    for index in range(length):
        entries.append(child_entry(key, ROOT, [entries[-1]], f"k{index % 5}", index))
    return entries[1:]


def claiming(author: SigningKey, parents: Sequence[Entry], value: int) -> Entry:
    """An entry that says ``author`` wrote it, signed by Mallory: its bytes are
    canonical and its shape right, its signature wrong."""
    signed = create_entry(
        MALLORY,
        tree=TREE,
        parents=[p.id for p in parents],
        height=max(p.height for p in parents) + 1,
        stores=[StoreWrite("d", (), encode_ops([SetOp(("forged",), value)]))],
    )
    return msgspec.structs.replace(signed, author=author.public_key)


def badly_signed(entry: Entry) -> Entry:
    """``entry`` with one bit of its signature flipped: other bytes, another id."""
    signature = bytearray(entry.signature)
    signature[0] ^= 1
    return msgspec.structs.replace(entry, signature=bytes(signature))


def authenticate(entries: Sequence[Entry]) -> Authentication:
    """Every round of checks, in one piece."""
    authentication = Authentication(entries)
    while pending := authentication.to_check():
        authentication.checked(zip(pending, signature_errors(pending), strict=True))
    return authentication


def valid_ids(entries: Sequence[Entry]) -> list[str]:
    valid, _ = check(TREE, [e.raw for e in entries])
    return [e.id for e in valid]


def test_one_author_s_run_of_1024_costs_one_signature_check() -> None:
    page = run(WRITER, ROOT, 1024)
    authentication = authenticate(page)
    assert authentication.checks == 1
    assert authentication.failed == {}
    assert all(authentication.is_authentic(e.id) for e in page)


def test_check_verifies_only_the_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = check_signature

    def counted(entry: Entry) -> None:
        checked.append(entry.id)
        real(entry)

    monkeypatch.setattr(intake_module, "check_signature", counted)
    page = run(WRITER, ROOT, 200)
    assert valid_ids([ROOT, *page]) == [e.id for e in [ROOT, *page]]
    # The writer's head vouches for its run; the owner's root is named by another key.
    assert sorted(checked) == sorted([page[-1].id, ROOT.id])


def test_a_forged_entry_claiming_the_author_mid_run_is_refused() -> None:
    page = run(WRITER, ROOT, 10)
    forged = claiming(WRITER, [page[4]], 1)  # the writer's next entry names page[4], not it
    valid, rejected = check(TREE, [e.raw for e in [*page[:5], forged, *page[5:]]])
    assert [e.id for e in valid] == [e.id for e in page]
    assert [type(r.error) for r in rejected] == [BadSignature]


def test_a_forged_chain_under_a_forged_head_is_refused_whole() -> None:
    page = run(WRITER, ROOT, 5)
    forged = [claiming(WRITER, [page[-1]], 0)]
    for value in range(1, 6):
        forged.append(claiming(WRITER, [forged[-1]], value))
    valid, rejected = check(TREE, [e.raw for e in [*page, *forged]])
    assert [e.id for e in valid] == [e.id for e in page]
    assert len(rejected) == len(forged)
    assert all(isinstance(r.error, BadSignature) for r in rejected)


def test_a_forged_head_over_a_real_run_costs_two_checks_and_is_refused() -> None:
    page = run(WRITER, ROOT, 100)
    forged = claiming(WRITER, [page[-1]], 0)  # names the writer's real head: no matter
    authentication = authenticate([*page, forged])
    assert authentication.checks == 2
    assert list(authentication.failed) == [forged.id]
    assert all(authentication.is_authentic(e.id) for e in page)


def test_a_run_mixing_authors_checks_each_author_s_heads() -> None:
    first = run(WRITER, ROOT, 4)
    second = run(OWNER, first[-1], 4)
    third = run(WRITER, second[-1], 4)
    batch = [*first, *second, *third]
    authentication = authenticate(batch)
    assert authentication.checks == 3  # each run's last entry: the next is another key's
    assert authentication.failed == {}
    forged = claiming(OWNER, [first[-1]], 0)  # the owner's real run names first[-1] too
    assert valid_ids([*batch, forged]) == [e.id for e in batch]


def test_another_key_s_child_does_not_vouch() -> None:
    """Vouching takes the same author key: an entry by the owner naming the writer's
    badly signed entry commits the owner, not the writer."""
    bad = badly_signed(run(WRITER, ROOT, 1)[0])
    child = child_entry(OWNER, ROOT, [bad], "k", 1)
    assert valid_ids([bad, child]) == [child.id]


def test_a_badly_signed_entry_is_taken_with_its_author_s_child_and_refused_alone() -> None:
    bad = badly_signed(run(WRITER, ROOT, 1)[0])
    child = child_entry(WRITER, ROOT, [bad], "k", 1)
    grandchild = child_entry(WRITER, ROOT, [child], "k", 2)
    assert valid_ids([bad]) == []
    assert valid_ids([bad, child]) == [bad.id, child.id]
    assert valid_ids([grandchild, bad, child]) == [grandchild.id, bad.id, child.id]


def test_a_badly_signed_child_vouches_for_nothing() -> None:
    """Only an authentic entry vouches: a badly signed head and what it names are each
    checked, and what fails is refused."""
    page = run(WRITER, ROOT, 3)
    bad_parent = badly_signed(page[0])
    bad_child = badly_signed(child_entry(WRITER, ROOT, [bad_parent], "k", 1))
    assert valid_ids([bad_parent, bad_child]) == []


def test_a_held_entry_vouches_for_its_parent_when_that_comes_alone() -> None:
    """The holding area's entries are authentic: one waiting for a badly signed parent
    by its author takes that parent when it comes, alone."""
    bad = badly_signed(run(WRITER, ROOT, 1)[0])
    child = child_entry(WRITER, ROOT, [bad], "k", 1)
    intake = Intake()
    assert intake.offer(TREE, [bad.raw]) != []  # alone: refused
    assert intake.offer(TREE, [child.raw]) == []
    assert intake.held(TREE) == 1
    assert intake.offer(TREE, [bad.raw]) == []  # again, after its child
    released = intake.release(TREE, {ROOT.id}.intersection)
    assert [e.id for e in released] == [bad.id, child.id]


def test_a_held_entry_by_another_key_does_not_vouch() -> None:
    bad = badly_signed(run(WRITER, ROOT, 1)[0])
    intake = Intake()
    intake.offer(TREE, [child_entry(OWNER, ROOT, [bad], "k", 1).raw])
    assert [type(r.error) for r in intake.offer(TREE, [bad.raw])] == [BadSignature]


def test_no_entry_is_checked_twice_whatever_fails() -> None:
    """However forged and real entries mix, a batch costs at most one check per
    entry, and what is authentic does not depend on the order of the batch."""
    page = run(WRITER, ROOT, 6)
    forged_chain = [claiming(WRITER, [page[2]], 0)]
    for value in range(1, 4):
        forged_chain.append(claiming(WRITER, [forged_chain[-1]], value))
    bad = badly_signed(page[3])
    batch = [*page, *forged_chain, bad, child_entry(WRITER, ROOT, [bad], "k", 9)]
    forward = authenticate(batch)
    backward = authenticate(batch[::-1])
    assert forward.checks <= len(batch) and backward.checks <= len(batch)
    authentic = {e.id for e in batch if forward.is_authentic(e.id)}
    assert authentic == {e.id for e in batch if backward.is_authentic(e.id)}
    assert authentic == {e.id for e in batch} - {e.id for e in forged_chain}


@settings(max_examples=100, deadline=None)
@given(
    dag_shapes(max_entries=14),
    st.lists(st.tuples(st.integers(0, 1), st.booleans()), min_size=14, max_size=14),
    st.randoms(use_true_random=False),
)
def test_the_authentic_entries_are_the_closure_of_the_verified_ones(
    shape: list[list[int]], marks: list[tuple[int, bool]], rng: random.Random
) -> None:
    """Whatever the entries, their authors and their spoiled signatures, and in any
    order: the authentic entries are those whose signatures verify, closed under
    "named by an authentic entry of the same author", each found with at most one
    check per entry."""
    entries = [ROOT]
    for index, parents in enumerate(shape, start=1):
        author, spoiled = marks[index - 1]
        entry = child_entry(
            [OWNER, WRITER][author], ROOT, [entries[i] for i in parents], "k", index
        )
        entries.append(badly_signed(entry) if spoiled else entry)
    by_id = {e.id: e for e in entries}
    errors = signature_errors(entries)
    authentic = {e.id for e, error in zip(entries, errors, strict=True) if error is None}
    grew = True
    while grew:
        before = len(authentic)
        authentic |= {
            other
            for entry_id in authentic
            for other in named(by_id[entry_id])
            if other in by_id and by_id[other].author == by_id[entry_id].author
        }
        grew = len(authentic) > before
    order = list(entries)
    rng.shuffle(order)
    authentication = authenticate(order)
    assert {e.id for e in entries if authentication.is_authentic(e.id)} == authentic
    assert set(authentication.failed) == set(by_id) - authentic
    assert authentication.checks <= len(entries)
