"""Revocation where remove wins: entries a revocation does not build on do not count.

Each scenario delivers the same entries in both orders (the revoked key's entries
first, or the revocation first) and checks that the node ends up reading the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

import eidetica
from eidetica.errors import PermissionDenied, Voided
from eidetica.protocol.entry import Entry


@pytest.fixture
async def owner() -> AsyncIterator[eidetica.Instance]:
    async with eidetica.open_instance(None) as instance:
        yield instance


@pytest.fixture
async def mallory() -> AsyncIterator[eidetica.Instance]:
    async with eidetica.open_instance(None) as instance:
        yield instance


async def copy(source: eidetica.Tree, target: eidetica.Instance) -> eidetica.Tree:
    await target.import_entries(await source.entries())
    return await target.open_tree(source.root_id)


async def new_entries(tree: eidetica.Tree, known: Sequence[Entry]) -> list[Entry]:
    seen = {e.id for e in known}
    return [e for e in await tree.entries() if e.id not in seen]


async def write(tree: eidetica.Tree, key: str, value: object) -> Entry:
    async with tree.transaction() as op:
        op.doc("d").set(key, value)
    assert op.entry is not None
    return op.entry


async def deliver(target: eidetica.Instance, tree: str, *batches: Sequence[Entry]) -> list[str]:
    """Offer each batch as a peer would; return the ids refused, all as voided."""
    refused: list[str] = []
    for batch in batches:
        receipt = await target.receive(tree, [e.raw for e in batch])
        assert [type(r.error) for r in receipt.rejected] == [Voided] * len(receipt.rejected)
        refused += [r.id for r in receipt.rejected if r.id is not None]
    return refused


@pytest.mark.parametrize("revocation_first", [False, True])
async def test_revoked_writer_building_on_old_parents_counts_for_nothing(
    owner: eidetica.Instance, mallory: eidetica.Instance, revocation_first: bool
) -> None:
    tree = await owner.create_tree(name="t")
    await tree.grant(mallory.public_key, "write")
    theirs = await copy(tree, mallory)
    await write(theirs, "before", 1)  # seen by the owner before the revocation counts
    await copy(theirs, owner)
    known = await tree.entries()
    await tree.revoke(mallory.public_key)
    revocation = await new_entries(tree, known)
    late = [await write(theirs, "late", i) for i in range(3)]  # on pre-revocation parents

    async with eidetica.open_instance(None) as node:
        await deliver(node, tree.root_id, known)
        if revocation_first:
            refused = await deliver(node, tree.root_id, revocation, late)
            assert refused == [e.id for e in reversed(late)]  # nothing builds on them
        else:
            assert await deliver(node, tree.root_id, late, revocation) == []
        copy_at_node = await node.open_tree(tree.root_id)
        assert (await copy_at_node.doc("d")).to_dict() == {"before": 1}
        voided = await copy_at_node.voided()
        assert set(voided) == (set() if revocation_first else {e.id for e in late})
        assert all(revocation[0].id in reason for reason in voided.values())
        assert (await copy_at_node.settings())["auth"] == {owner.public_key: "admin"}


async def test_voided_entry_that_a_good_one_builds_on_is_kept_but_not_counted(
    owner: eidetica.Instance, mallory: eidetica.Instance
) -> None:
    tree = await owner.create_tree(name="t")
    await tree.grant(mallory.public_key, "write")
    async with eidetica.open_instance(None) as writer:
        await tree.grant(writer.public_key, "write")
        theirs, honest = await copy(tree, mallory), await copy(tree, writer)
        known = await tree.entries()
        await tree.revoke(mallory.public_key)
        revocation = await new_entries(tree, known)
        bad = await write(theirs, "bad", 1)
        await copy(theirs, writer)  # the honest writer has not heard of the revocation
        good = await write(honest, "good", 2)  # builds on the voided entry
        assert await deliver(owner, tree.root_id, [bad, good]) == []
        assert set(await tree.voided()) == {bad.id}
        assert (await tree.doc("d")).to_dict() == {"good": 2}
        assert revocation


@pytest.mark.parametrize("revocation_first", [False, True])
async def test_demoted_admin_cannot_raise_itself_or_lower_the_owner(
    owner: eidetica.Instance, mallory: eidetica.Instance, revocation_first: bool
) -> None:
    tree = await owner.create_tree(name="t")
    await tree.grant(mallory.public_key, "admin")
    theirs = await copy(tree, mallory)
    known = await tree.entries()
    await tree.grant(mallory.public_key, "read")
    demotion = await new_entries(tree, known)

    # On the tips from before its demotion, it cannot lower the owner, in any order.
    with pytest.raises(PermissionDenied, match="owner's admin, which stays"):
        async with theirs.transaction() as op:
            op.settings().set(("auth", mallory.public_key), "admin")
            op.settings().set(("auth", owner.public_key), "read")
    # It can still sign a settings entry that passes where it was signed: grant a friend.
    async with eidetica.open_instance(None) as friend:
        await theirs.grant(friend.public_key, "write")
        grant = await new_entries(theirs, known)
        friends = await copy(theirs, friend)
        friendly = await write(friends, "friend", 1)

        async with eidetica.open_instance(None) as node:
            await deliver(node, tree.root_id, known)
            order = [demotion, [*grant, friendly]]
            await deliver(node, tree.root_id, *(order if revocation_first else order[::-1]))
            copy_at_node = await node.open_tree(tree.root_id)
            settings = await copy_at_node.settings()
            assert settings["auth"] == {owner.public_key: "admin", mallory.public_key: "read"}
            assert (await copy_at_node.doc("d")).to_dict() == {}
            voided = set(await copy_at_node.voided())
            assert voided == (set() if revocation_first else {grant[0].id, friendly.id})

    # The owner keeps admin and goes on writing on top of everything.
    await deliver(owner, tree.root_id, grant)
    await tree.grant(mallory.public_key, "write")
    assert (await tree.settings())["auth"][owner.public_key] == "admin"


@pytest.mark.parametrize("first", ["senior", "junior"])
async def test_admins_revoking_each_other_concurrently_the_senior_wins(
    owner: eidetica.Instance, first: str
) -> None:
    async with (
        eidetica.open_instance(None) as senior,
        eidetica.open_instance(None) as junior,
    ):
        tree = await owner.create_tree(name="t")
        await tree.grant(senior.public_key, "admin")
        await tree.grant(junior.public_key, "admin")
        at_senior, at_junior = await copy(tree, senior), await copy(tree, junior)
        known = await tree.entries()
        await at_senior.grant(junior.public_key, "read")
        await at_junior.revoke(senior.public_key)
        by_senior = await new_entries(at_senior, known)
        by_junior = await new_entries(at_junior, known)
        order = [by_senior, by_junior] if first == "senior" else [by_junior, by_senior]
        async with eidetica.open_instance(None) as node:
            await deliver(node, tree.root_id, known, *order)
            auth = (await (await node.open_tree(tree.root_id)).settings())["auth"]
            assert auth == {
                owner.public_key: "admin",
                senior.public_key: "admin",
                junior.public_key: "read",
            }


async def test_a_key_granted_again_after_its_revocation_writes_again(
    owner: eidetica.Instance, mallory: eidetica.Instance
) -> None:
    tree = await owner.create_tree(name="t")
    await tree.grant(mallory.public_key, "write")
    await tree.revoke(mallory.public_key)
    await tree.grant(mallory.public_key, "write")
    theirs = await copy(tree, mallory)
    entry = await write(theirs, "back", 1)
    assert await deliver(owner, tree.root_id, [entry]) == []
    assert (await tree.doc("d")).to_dict() == {"back": 1}
    assert await tree.voided() == {}
