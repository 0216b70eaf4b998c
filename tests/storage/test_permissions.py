"""Permissions: every entry is judged by the settings as of its parents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import eidetica
from eidetica.errors import (
    InvalidKey,
    InvalidPermission,
    InvalidSettings,
    PermissionDenied,
    ShapeError,
)
from eidetica.protocol.entry import SETTINGS_STORE, StoreWrite, create_entry
from eidetica.storage.crdt import SetOp, encode_ops


async def copy_tree(source: eidetica.Tree, target: eidetica.Instance) -> eidetica.Tree:
    """Bring ``target`` up to date with ``source`` by importing all of its entries."""
    await target.import_entries(await source.entries())
    return await target.open_tree(source.root_id)


@pytest.fixture
async def other() -> AsyncIterator[eidetica.Instance]:
    async with eidetica.open_instance(None) as instance:
        yield instance


async def test_commit_without_permission_is_refused_and_stores_nothing(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    theirs = await copy_tree(tree, other)
    tips = await theirs.tips()
    with pytest.raises(PermissionDenied, match="needs write, has no permission"):
        async with theirs.transaction() as op:
            op.doc("d").set("x", 1)
    assert await theirs.tips() == tips
    assert len(await theirs.entries()) == 1


async def test_granted_writer_can_write_and_others_accept_it(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    await tree.grant(other.public_key, "write")
    theirs = await copy_tree(tree, other)
    async with theirs.transaction() as op:
        op.doc("d").set("x", "from other")
    await copy_tree(theirs, inst)
    assert (await tree.doc("d")).get("x") == "from other"
    assert await tree.tips() == await theirs.tips()


async def test_writer_cannot_change_settings(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    await tree.grant(other.public_key, "write")
    theirs = await copy_tree(tree, other)
    with pytest.raises(PermissionDenied, match="needs admin, has write"):
        await theirs.grant(other.public_key, "admin")


async def test_reader_cannot_write(inst: eidetica.Instance, other: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    await tree.grant(other.public_key, "read")
    theirs = await copy_tree(tree, other)
    with pytest.raises(PermissionDenied, match="has read"):
        async with theirs.transaction() as op:
            op.doc("d").set("x", 1)


async def test_anyone_grant_applies_to_every_key(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="open")
    await tree.grant("*", "write")
    theirs = await copy_tree(tree, other)
    async with theirs.transaction() as op:
        op.doc("d").set("x", 1)
    assert op.entry is not None


async def test_unknown_permission_or_key_is_typed_error(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    with pytest.raises(InvalidPermission, match="'owner'"):
        await tree.grant(inst.public_key, "owner")
    with pytest.raises(InvalidKey):
        await tree.grant("not-a-key", "read")
    with pytest.raises(InvalidSettings, match="unknown permission 'Admin'"):
        async with tree.transaction() as op:
            op.settings().set(("auth", inst.public_key), "Admin")
    assert (await tree.settings())["auth"] == {inst.public_key: "admin"}


async def test_entry_is_judged_by_settings_as_of_its_parents(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    await tree.grant(other.public_key, "write")
    theirs = await copy_tree(tree, other)
    # The writer commits concurrently with its revocation: its entry does not build on
    # the revoke, so it stays valid under the settings its author could see.
    async with theirs.transaction() as op:
        op.doc("d").set("x", "concurrent")
    await tree.revoke(other.public_key)
    await copy_tree(theirs, inst)
    assert (await tree.doc("d")).get("x") == "concurrent"
    # Once the writer has seen the revocation, anything built on it is refused.
    await copy_tree(tree, other)
    with pytest.raises(PermissionDenied):
        async with theirs.transaction() as op:
            op.doc("d").set("x", "after revoke")


async def test_forged_settings_entry_is_refused(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    (root,) = await tree.entries()
    # Another key writes itself in as admin, signing validly with its own key.
    grab = create_entry(
        other.device_key,
        tree=root.id,
        parents=[root.id],
        height=1,
        stores=[
            StoreWrite(
                SETTINGS_STORE,
                (root.id,),
                encode_ops([SetOp(("auth", other.public_key), "admin")]),
            )
        ],
    )
    with pytest.raises(PermissionDenied):
        await inst.import_entries([grab])
    assert await tree.tips() == [root.id]


async def test_settings_entry_must_name_the_settings_tips(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    (root,) = await tree.entries()
    skipped = create_entry(
        inst.device_key,
        tree=root.id,
        parents=[root.id],
        height=1,
        stores=[StoreWrite(SETTINGS_STORE, (), encode_ops([SetOp(("name",), "renamed")]))],
    )
    with pytest.raises(ShapeError, match="settings tips"):
        await inst.import_entries([skipped])


async def test_root_author_must_be_admin_of_its_own_tree(inst: eidetica.Instance) -> None:
    root = create_entry(
        inst.device_key,
        tree=None,
        parents=(),
        height=0,
        stores=[StoreWrite(SETTINGS_STORE, (), encode_ops([SetOp(("name",), "ownerless")]))],
        entropy=bytes(16),
    )
    async with eidetica.open_instance(None) as fresh:
        with pytest.raises(PermissionDenied):
            await fresh.import_entries([root])
        assert await fresh.trees() == []
