"""Receiving entries from a peer: verify before store, keep the good, hold the early."""

from __future__ import annotations

import trio
import trio.testing

import eidetica
from eidetica.errors import (
    BadSignature,
    IdMismatch,
    MissingParents,
    PermissionDenied,
    WrongTree,
)
from eidetica.protocol.entry import Entry, StoreWrite, create_entry
from eidetica.protocol.intake import Intake
from eidetica.protocol.keys import SigningKey
from eidetica.storage.crdt import SetOp, encode_ops
from eidetica.storage.instance import VERIFY_SLICE
from tests.builders import build_entries, child_entry


async def chain(inst: eidetica.Instance, length: int) -> tuple[eidetica.Tree, list[Entry]]:
    tree = await inst.create_tree(name="t")
    for i in range(length):
        async with tree.transaction() as op:
            op.doc("d").set("n", i)
    return tree, await tree.entries()


async def test_good_entries_of_a_bad_batch_are_stored(inst: eidetica.Instance) -> None:
    tree, entries = await chain(inst, 3)
    root, first, _second, third = entries
    corrupt = bytearray(third.raw)
    corrupt[-1] ^= 1
    async with eidetica.open_instance(None) as peer:
        receipt = await peer.receive(tree.root_id, [root.raw, first.raw, bytes(corrupt)])
        assert receipt.stored == [root.id, first.id]
        assert [type(r.error) for r in receipt.rejected] == [BadSignature]
        copy = await peer.open_tree(tree.root_id)
        assert await copy.tips() == [first.id]
        assert (await copy.doc("d")).get("n") == 0


async def test_early_entries_wait_for_their_parents(inst: eidetica.Instance) -> None:
    tree, entries = await chain(inst, 4)
    async with eidetica.open_instance(None) as peer:
        receipt = await peer.receive(tree.root_id, [e.raw for e in entries[3:]])
        assert receipt.stored == [] and receipt.held == 2
        assert receipt.missing == [entries[2].id]
        assert peer.backend.has(e.id for e in entries) == set()  # nothing unverified stored
        receipt = await peer.receive(tree.root_id, [e.raw for e in entries[:3]])
        assert receipt.stored == [e.id for e in entries]
        assert receipt.held == 0 and receipt.missing == []


async def test_entry_for_another_tree_is_refused(inst: eidetica.Instance) -> None:
    _, entries = await chain(inst, 1)
    other = await inst.create_tree(name="other")
    async with eidetica.open_instance(None) as peer:
        receipt = await peer.receive(other.root_id, [e.raw for e in entries])
        assert receipt.stored == []
        assert {type(r.error) for r in receipt.rejected} == {WrongTree}


async def test_claimed_ids_are_checked(inst: eidetica.Instance) -> None:
    tree, entries = await chain(inst, 1)
    async with eidetica.open_instance(None) as peer:
        receipt = await peer.receive(tree.root_id, [entries[0].raw], ids=["0" * 64])
        assert [type(r.error) for r in receipt.rejected] == [IdMismatch]
        assert receipt.rejected[0].id == "0" * 64


async def test_unauthorized_entry_and_its_descendants_are_refused(
    inst: eidetica.Instance,
) -> None:
    _tree, entries = await chain(inst, 1)
    root, first = entries
    async with eidetica.open_instance(None) as stranger:
        forged = create_entry(
            stranger.device_key,
            tree=root.id,
            parents=[first.id],
            height=2,
            stores=[StoreWrite("d", (first.id,), encode_ops([SetOp(("n",), 666)]))],
        )
        built_on = create_entry(
            inst.device_key,  # valid author, but it builds on the forged entry
            tree=root.id,
            parents=[forged.id],
            height=3,
            stores=[StoreWrite("d", (forged.id,), encode_ops([SetOp(("n",), 7)]))],
        )
    async with eidetica.open_instance(None) as peer:
        receipt = await peer.receive(root.id, [root.raw, first.raw, forged.raw, built_on.raw])
        assert receipt.stored == [root.id, first.id]
        assert [type(r.error) for r in receipt.rejected] == [PermissionDenied, MissingParents]
        assert [r.id for r in receipt.rejected] == [forged.id, built_on.id]
        assert (await (await peer.open_tree(root.id)).doc("d")).get("n") == 0


async def test_receiving_what_is_stored_changes_nothing(inst: eidetica.Instance) -> None:
    tree, entries = await chain(inst, 2)
    tips = await tree.tips()
    receipt = await inst.receive(tree.root_id, [e.raw for e in entries])
    assert receipt.stored == [] and receipt.rejected == [] and receipt.held == 0
    assert await tree.tips() == tips


async def test_a_strangers_orphans_do_not_push_out_a_peers_waiting_entries(
    inst: eidetica.Instance,
) -> None:
    tree, entries = await chain(inst, 4)
    root = entries[0]
    stranger = SigningKey.generate()
    orphans = [root]
    for height in range(1, 12):
        orphans.append(child_entry(stranger, root, [orphans[-1]], "k", height))
    async with eidetica.open_instance(None) as peer:
        peer.intake = Intake(max_held_per_source=5)
        receipt = await peer.receive(tree.root_id, [root.raw], source="ed25519:friend")
        assert receipt.stored == [root.id]
        receipt = await peer.receive(
            tree.root_id, [e.raw for e in entries[3:]], source="ed25519:friend"
        )
        assert receipt.held == 2
        receipt = await peer.receive(
            tree.root_id, [e.raw for e in orphans[2:]], source=stranger.public_key
        )
        assert receipt.held == 2 + 5
        assert peer.intake.held_by(stranger.public_key) == 5
        assert peer.intake.held_by("ed25519:friend") == 2
        receipt = await peer.receive(
            tree.root_id, [e.raw for e in entries[1:3]], source="ed25519:friend"
        )
        assert receipt.stored == [e.id for e in entries[1:]]
        assert receipt.held == 5 and peer.intake.held_by("ed25519:friend") == 0


async def test_a_big_batch_is_verified_a_slice_at_a_time_and_cannot_be_cut_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Other tasks run between slices of a page's verification (under a MockClock the
    checks and the write are inline, so the slices are the only steps), and cancelling
    the receiver once it has begun still stores the whole page."""
    entries = build_entries(20 * VERIFY_SLICE)
    ticks = 0
    async with eidetica.open_instance(None) as inst:
        await inst.import_entries(entries[:1])

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.lowlevel.checkpoint()
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_soon, scope)
                await inst.receive(entries[0].id, [e.raw for e in entries[1:]])
            nursery.cancel_scope.cancel()
        assert ticks >= 15  # one a slice, less the steps the cancelling task took
        tree = await inst.open_tree(entries[0].id)
        assert await tree.tips() == [entries[-1].id]


async def cancel_soon(scope: trio.CancelScope) -> None:
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()
    scope.cancel()
