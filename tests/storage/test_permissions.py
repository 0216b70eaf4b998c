"""Permissions: every entry is judged by the settings as of its parents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import eidetica
from eidetica.errors import (
    InvalidKey,
    InvalidPermission,
    InvalidSettings,
    PermissionDenied,
    ShapeError,
    WrongTree,
)
from eidetica.protocol.auth import Permission
from eidetica.protocol.entry import SETTINGS_STORE, Entry, StoreWrite, create_entry
from eidetica.storage.crdt import SetOp, encode_ops
from tests.builders import settings_on_root


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
    # The writer commits concurrently with its revocation: its entry is valid under the
    # settings its author could see, so it is stored, but remove wins: it does not count.
    async with theirs.transaction() as op:
        op.doc("d").set("x", "concurrent")
    await tree.revoke(other.public_key)
    await copy_tree(theirs, inst)
    assert op.entry is not None and op.entry.id in await tree.voided()
    assert (await tree.doc("d")).get("x") is None
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
    grab = settings_on_root(other.device_key, root, [SetOp(("auth", other.public_key), "admin")])
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


async def test_concurrent_settings_changes_merge(tmp_path: Path) -> None:
    async with eidetica.open_instance(tmp_path / "a") as a, eidetica.open_instance(None) as b:
        tree = await a.create_tree(name="t")
        await tree.grant(b.public_key, "admin")
        theirs = await copy_tree(tree, b)
        await tree.grant("*", "read")  # two admins change settings concurrently
        await theirs.grant(a.public_key, "admin")
        async with theirs.transaction() as op:
            op.settings().set("name", "renamed")
        await copy_tree(theirs, a)
        await copy_tree(tree, b)
        expected = await tree.settings()
        assert expected["name"] == "renamed" and expected["auth"]["*"] == "read"
        assert await theirs.settings() == expected
        await tree.grant(b.public_key, "write")  # built on both settings branches
        await copy_tree(tree, b)
        assert (await theirs.settings())["auth"][b.public_key] == "write"
        root_id = tree.root_id
    async with eidetica.open_instance(tmp_path / "a") as a:  # cold caches
        reopened = await a.open_tree(root_id)
        await reopened.grant("*", "write")
        assert (await reopened.settings())["auth"]["*"] == "write"


async def test_heights_and_trees_of_parents_are_checked(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    other = await inst.create_tree(name="other")
    (root,) = await tree.entries()
    (other_root,) = await other.entries()

    def entry(parents: list[str], height: int) -> Entry:
        data = encode_ops([SetOp(("x",), 1)])
        return create_entry(
            inst.device_key,
            tree=root.id,
            parents=parents,
            height=height,
            stores=[StoreWrite("d", (), data)],
        )

    with pytest.raises(ShapeError, match="height"):
        await inst.import_entries([entry([root.id], 2)])
    with pytest.raises(WrongTree):
        await inst.import_entries([entry([other_root.id], 1)])
    assert await tree.tips() == [root.id]


async def test_permission_reads_the_settings_as_of_the_tips(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    tree = await inst.create_tree(name="t")
    assert await tree.permission(inst.public_key) == Permission.ADMIN
    assert await tree.permission(other.public_key) is None
    await tree.grant("*", "read")
    assert await tree.permission(other.public_key) == Permission.READ
    await tree.grant(other.public_key, "write")
    assert await tree.permission(other.public_key) == Permission.WRITE
    await tree.revoke(other.public_key)
    assert await tree.permission(other.public_key) == Permission.READ  # still through "*"


async def test_a_writer_allowed_before_its_revocation_is_refused_after_it(
    inst: eidetica.Instance, other: eidetica.Instance
) -> None:
    # Each node remembers who the settings at given tips allow; a revocation makes new
    # tips, so what was remembered under the old ones does not let the writer through.
    tree = await inst.create_tree(name="t")
    await tree.grant(other.public_key, "write")
    theirs = await copy_tree(tree, other)
    for value in range(2):
        async with theirs.transaction() as op:
            op.doc("d").set("x", value)
    await copy_tree(theirs, inst)
    await tree.revoke(other.public_key)
    await copy_tree(tree, other)
    assert await theirs.voided() == {}  # everything counts: the plain path
    with pytest.raises(PermissionDenied, match="has no permission"):
        async with theirs.transaction() as op:
            op.doc("d").set("x", "after revoke")
    assert (await theirs.doc("d")).get("x") == 1
