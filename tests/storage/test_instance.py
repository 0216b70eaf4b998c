"""Instance: trees, persistence across reopen, the device key, commit hooks, imports."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

import eidetica
from eidetica.errors import (
    BadSignature,
    MalformedEntry,
    MissingParents,
    StorageError,
    SyncError,
    TreeNotFound,
)
from eidetica.protocol.entry import Entry, create_entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage import instance as storage


async def test_create_write_read(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="notes")
    async with tree.transaction() as op:
        op.doc("todo").set("milk", {"done": False})
    assert (await tree.doc("todo")).get("milk") == {"done": False}
    assert (await inst.open_tree(tree.root_id)).root_id == tree.root_id
    tips = await tree.tips()
    assert tips == sorted(tips) and len(tips) == 1
    settings = await tree.settings()
    assert settings == {"name": "notes", "auth": {inst.public_key: "admin"}}


async def test_public_key_has_text_form(inst: eidetica.Instance) -> None:
    assert inst.public_key.startswith("ed25519:")


async def test_two_trees_with_equal_settings_get_different_ids(inst: eidetica.Instance) -> None:
    first = await inst.create_tree(name="same")
    second = await inst.create_tree(name="same")
    assert first.root_id != second.root_id
    assert [t.root_id for t in await inst.trees()] == sorted([first.root_id, second.root_id])


async def test_unknown_tree_is_typed_error(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        op.doc("d").set("x", 1)
    (child,) = await tree.tips()
    with pytest.raises(TreeNotFound):
        await inst.open_tree("0" * 64)
    with pytest.raises(TreeNotFound):
        await inst.open_tree(child)  # an entry, but not a root


async def test_sqlite_survives_reopen_with_data_tips_and_key(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    async with eidetica.open_instance(directory) as inst:
        key = inst.public_key
        tree = await inst.create_tree(name="notes")
        for i in range(5):
            async with tree.transaction() as op:
                op.doc("todo").set(f"item{i}", i)
        tips = await tree.tips()
        entries = await tree.entries()
    async with eidetica.open_instance(directory) as inst:
        assert inst.public_key == key
        reopened = await inst.open_tree(tree.root_id)
        assert await reopened.tips() == tips
        assert await reopened.entries() == entries
        assert (await reopened.doc("todo")).to_dict() == {f"item{i}": i for i in range(5)}
        async with reopened.transaction() as op:
            op.doc("todo").set("after", True)
        assert (await reopened.tips()) != tips


async def test_device_key_is_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    async with eidetica.open_instance(directory) as inst:
        key = inst.public_key
    key_file = directory / "device.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with eidetica.open_instance(directory) as inst:
        assert inst.public_key == key


async def test_readable_device_key_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "node"
    async with eidetica.open_instance(directory):
        pass
    key_file = directory / "device.key"
    key_file.chmod(0o644)
    async with eidetica.open_instance(directory):
        pass
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "tightening" in caplog.text


async def test_corrupt_database_is_typed_error(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    directory.mkdir()
    (directory / "eidetica.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        async with eidetica.open_instance(directory):
            pass


async def test_corrupt_device_key_is_typed_error(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    directory.mkdir()
    fd = os.open(directory / "device.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"zz")
    os.close(fd)
    with pytest.raises(StorageError, match="device key"):
        async with eidetica.open_instance(directory):
            pass


async def test_commit_hooks_run_after_store(inst: eidetica.Instance) -> None:
    seen: list[tuple[str, Entry, list[str]]] = []

    def hook(tree: eidetica.Tree, entry: Entry) -> None:
        # The entry is already stored when hooks run: it is the tree's tip.
        seen.append((tree.root_id, entry, inst.backend.tips(tree.root_id)))

    inst.add_commit_hook(hook)
    tree = await inst.create_tree(name="hooked")
    async with tree.transaction() as op:
        op.doc("d").set("x", 1)
    assert [(root, entry.id, tips) for root, entry, tips in seen] == [
        (tree.root_id, tree.root_id, [tree.root_id]),
        (tree.root_id, op.entry.id if op.entry else "", [op.entry.id if op.entry else ""]),
    ]
    assert seen[0][1].is_root and not seen[1][1].is_root
    inst.remove_commit_hook(hook)
    async with tree.transaction() as op:
        op.doc("d").set("x", 2)
    assert len(seen) == 2


async def test_failing_hook_is_logged_and_never_undoes_the_commit(
    inst: eidetica.Instance, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(tree: eidetica.Tree, entry: Entry) -> None:
        raise RuntimeError("hook exploded")

    later: list[str] = []
    inst.add_commit_hook(broken)
    inst.add_commit_hook(lambda tree, entry: later.append(entry.id))
    tree = await inst.create_tree(name="t")
    with caplog.at_level(logging.ERROR):
        async with tree.transaction() as op:
            op.doc("d").set("x", 1)
    assert (await tree.doc("d")).get("x") == 1
    assert op.entry is not None and later[-1] == op.entry.id
    assert "hook exploded" in caplog.text


async def test_import_copies_a_tree_between_nodes(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    for i in range(3):
        async with tree.transaction() as op:
            op.doc("d").set("x", i)
    entries = await tree.entries()
    async with eidetica.open_instance(None) as other:
        added = await other.import_entries(reversed(entries))  # any order within a batch
        assert sorted(added) == sorted(e.id for e in entries)
        assert await other.import_entries(e.raw for e in entries) == []  # idempotent
        copy = await other.open_tree(tree.root_id)
        assert await copy.tips() == await tree.tips()
        assert (await copy.doc("d")).get("x") == 2


async def test_a_bad_entry_fails_its_whole_batch(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="t")
    async with tree.transaction() as op:
        op.doc("d").set("x", 1)
    root, child = await tree.entries()
    corrupt = bytearray(child.raw)
    corrupt[-1] ^= 1
    async with eidetica.open_instance(None) as other:
        with pytest.raises(BadSignature):
            await other.import_entries([root.raw, bytes(corrupt)])
        assert other.backend.has([root.id, child.id]) == set()
        with pytest.raises(MissingParents) as missing:
            await other.import_entries([child.raw])
        assert missing.value.missing == {root.id}
        with pytest.raises(MalformedEntry):
            await other.import_entries([b"\x00garbage"])
        assert await other.trees() == []


async def test_commits_on_one_tree_are_serialized(inst: eidetica.Instance) -> None:
    tree = await inst.create_tree(name="busy")

    async def writer(number: int) -> None:
        async with tree.transaction() as op:
            op.doc("d").set(f"w{number}", number)
            await trio.lowlevel.checkpoint()  # let the others stage in between

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for number in range(20):
                nursery.start_soon(writer, number)
    entries = await tree.entries()
    assert [e.height for e in entries] == list(range(21))  # one chain, no forks
    assert len(await tree.tips()) == 1
    assert (await tree.doc("d")).to_dict() == {f"w{n}": n for n in range(20)}


async def test_a_node_directory_is_owned_by_one_opener(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    async with eidetica.open_instance(directory) as inst:
        await inst.create_tree(name="t")
        with pytest.raises(StorageError, match="in use"):
            async with eidetica.open_instance(directory):
                pass
        assert len(await inst.trees()) == 1  # the owner is unaffected
    async with eidetica.open_instance(directory) as inst:  # free again once closed
        assert len(await inst.trees()) == 1


async def test_sync_opens_the_engine_the_instance_was_built_with() -> None:
    opened: list[tuple[eidetica.Instance, dict[str, object]]] = []

    @asynccontextmanager
    async def opener(instance: eidetica.Instance, **options: object) -> AsyncIterator[str]:
        opened.append((instance, options))
        yield "the engine"

    async with (
        storage.open_instance(None, sync_opener=opener) as inst,
        inst.sync(name="n") as engine,
    ):
        assert engine == "the engine"
    assert opened == [(inst, {"name": "n"})]


async def test_an_instance_built_without_an_engine_says_where_to_get_one() -> None:
    async with storage.open_instance(None) as inst:
        with pytest.raises(SyncError, match=r"eidetica\.open_instance"):
            inst.sync()


async def test_an_entry_refused_again_is_logged_once(
    inst: eidetica.Instance, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoked writer's node offers its refused entries at every sync: the first
    refusal is a warning, the repeats are debug lines."""
    tree = await inst.create_tree(name="t")
    stranger = SigningKey.generate()
    forged = create_entry(stranger, tree=tree.root_id, parents=[tree.root_id], height=1, stores=[])
    with caplog.at_level(logging.WARNING, logger="eidetica.storage.instance"):
        for _ in range(3):
            receipt = await inst.receive(tree.root_id, [forged.raw])
            assert [r.id for r in receipt.rejected] == [forged.id]
    assert caplog.text.count(f"refused entry {forged.id}") == 1
