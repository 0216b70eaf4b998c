"""What must hold once a simulation healed and its timers ran.

Each check raises :class:`InvariantBroken` saying which promise broke, on which
node, with enough to find it in the trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eidetica.actors.engine.retries import MAX_QUEUED
from eidetica.actors.engine.status import SyncStatus
from eidetica.errors import Voided
from eidetica.protocol.intake import check
from eidetica.storage.instance import Instance, open_instance

Documents = tuple[object, ...]
"""A tree's settings and every user store's document, as plain values."""


class InvariantBroken(AssertionError):
    """A promise of the engine did not hold in a simulated run."""


async def documents(inst: Instance, tree: str) -> Documents:
    """What ``inst`` reads in ``tree``: its settings and each store written to."""
    handle = await inst.open_tree(tree)
    written = {write.name for e in await handle.entries() for write in e.stores}
    stores = sorted(store for store in written if not store.startswith("_"))
    return (await handle.settings(), *[(s, (await handle.doc(s)).to_dict()) for s in stores])


def counting(inst: Instance, tree: str) -> frozenset[str]:
    """The ids of the entries of ``tree`` that ``inst`` stores and that count."""
    voided = inst.voided(tree)
    return frozenset(entry for entry in inst.backend.tree_ids(tree) if entry not in voided)


async def same_entries_and_documents(nodes: Mapping[str, Instance], tree: str) -> None:
    """Every node that syncs ``tree`` holds the same entries that count, and reads the
    same documents.

    Only entries that do not count may be held by some nodes and not others: writes
    by a key concurrent with its revocation, which a node that knew of the revocation
    refuses (remove wins: :mod:`eidetica.storage.revocation`), while the node that made
    them keeps them. Those are dead where held (:mod:`eidetica.storage.live`), so every
    node names the same tips when it syncs."""
    seen = {
        name: (counting(i, tree), await documents(i, tree), i.sync_tips(tree))
        for name, i in nodes.items()
    }
    first_name, (first_ids, first_docs, first_tips) = next(iter(seen.items()))
    for name, (ids, docs, tips) in seen.items():
        if tips != first_tips:
            raise InvariantBroken(f"{name} syncs tips {tips}, {first_name} {first_tips}")
        if ids != first_ids:
            one = min(ids ^ first_ids)
            holder = name if one in ids else first_name
            other = first_name if holder == name else name
            raise InvariantBroken(f"{holder} holds {one}, which counts, and {other} does not")
        if docs != first_docs:
            raise InvariantBroken(f"{name} reads other documents than {first_name}")


def nothing_acknowledged_lost(
    nodes: Mapping[str, Instance], acknowledged: Sequence[tuple[str, str]], tree: str
) -> None:
    """Every entry a commit acknowledged (on any node) is stored on every node, unless
    it does not count where it is held (a revoked writer's, concurrent with its
    revocation, which the nodes that knew of it first refuse)."""
    voided = set().union(*(inst.voided(tree) for inst in nodes.values()))
    for name, inst in nodes.items():
        for author, entry_id in acknowledged:
            if inst.backend.get(entry_id) is None and entry_id not in voided:
                raise InvariantBroken(f"{name} lacks {entry_id}, acknowledged on {author}")


def nothing_unverified(nodes: Mapping[str, Instance], tree: str) -> None:
    """Every stored entry's bytes and id check out, and it is authentic: its signature
    verifies, or an authentic stored entry by the same author names it
    (``docs/protocol.md``, section 5)."""
    for name, inst in nodes.items():
        entries = list(inst.backend.tree_entries(tree))
        valid, rejected = check(tree, [e.raw for e in entries], [e.id for e in entries])
        if rejected:
            bad = sorted({e.id for e in entries} - {e.id for e in valid})
            raise InvariantBroken(f"{name} stores {bad[:1]}, which fails: {rejected[0].reason}")


async def nothing_unauthorized(nodes: Mapping[str, Instance], tree: str) -> None:
    """Every stored entry is one a node new to the tree accepts: fed the tree's entries
    parents first, a fresh node in memory refuses none (each author held the
    permission its write needed), and reads the same documents as the node they came
    from (what that node folded bit by bit, as entries arrived in any order, equals one
    fold of the whole). The one exception: an entry that does not count here and that
    nothing builds on, which a node that knows of the revocation voiding it refuses."""
    for name, inst in nodes.items():
        entries = sorted(inst.backend.tree_entries(tree), key=lambda e: (e.height, e.id))
        voided = inst.voided(tree)
        async with open_instance(None) as fresh:
            receipt = await fresh.receive(tree, [entry.raw for entry in entries])
            for rejection in receipt.rejected:
                if not (isinstance(rejection.error, Voided) and rejection.id in voided):
                    raise InvariantBroken(
                        f"{name} stores {rejection.id}, which a fresh node refuses:"
                        f" {rejection.reason}"
                    )
            if receipt.held or len(receipt.stored) + len(receipt.rejected) != len(entries):
                raise InvariantBroken(f"{name} stores entries of {tree} whose parents it lacks")
            if await documents(fresh, tree) != await documents(inst, tree):
                raise InvariantBroken(f"{name} reads other documents than one fold of its entries")


async def nothing_held(nodes: Mapping[str, Instance], tree: str) -> None:
    """No entry that counts on some node still waits for its parents on another.

    What may wait is a chain behind an entry that does not count: a revoked writer's
    writes, pushed as they were made, whose first entry the node refused (it knew of
    the revocation). Where the chain is stored it is dead (:mod:`eidetica.storage.live`)
    and nobody offers it again, so the rest waits until the holding area's caps and
    age push it out."""
    voided = {name: inst.voided(tree) for name, inst in nodes.items()}
    for name, inst in nodes.items():
        for entry in inst.intake.waiting(tree):
            for other, stores in nodes.items():
                if stores.backend.get(entry.id) is not None and entry.id not in voided[other]:
                    raise InvariantBroken(
                        f"{name} still holds {entry.id}, waiting for its parents,"
                        f" which counts on {other}"
                    )


def memory_bounded(statuses: Mapping[str, SyncStatus], *, peers: int) -> None:
    """What a node keeps for its peers is bounded by them, not by what happened: no
    more peer records than nodes it was told of, no more retries queued than the
    queue's cap, no more syncs under way than one per peer for the one tree, no watch
    outliving its peer, and no actor left down after crashing. (Retries may be queued
    here: to a peer gone for good, which the node cannot tell from one away, and a push
    in flight when the nodes agreed may fail after; the simulation's settling waited
    for a moment with no retry queued to a staying peer.)"""
    for name, status in statuses.items():
        if len(status.peers) > peers:
            raise InvariantBroken(f"{name} keeps {len(status.peers)} peers, knows of {peers}")
        if len(status.retries) > MAX_QUEUED:
            raise InvariantBroken(f"{name} queues {len(status.retries)} retries, over {MAX_QUEUED}")
        if len(status.syncing) > peers:
            raise InvariantBroken(f"{name} runs {len(status.syncing)} syncs with {peers} peers")
        if status.watches.held > peers:
            raise InvariantBroken(f"{name} holds {status.watches.held} watches for {peers} peers")
        if status.crashed:
            raise InvariantBroken(f"{name} left actors down after crashes: {status.crashed}")


def tasks_bounded(running: int, *, nodes: int) -> None:
    """The tasks running are bounded by the nodes and their peers, not by the run's
    length: each node's actors, one peer actor (and its jobs) per peer, and the run's
    own few. Measured: 27 tasks for 3 nodes and 53 for 5, whatever the steps."""
    bound = 4 + nodes * (8 + 3 * (nodes - 1))
    if running > bound:
        raise InvariantBroken(f"{running} tasks run for {nodes} nodes, over {bound}: a leak")
