"""Regression tests for what the simulator found, each named after the seed that
found it (``python -m eidetica.testing.sim --start SEED --seeds 1 ...`` replays it)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from eidetica.testing import Simulation, run_seed


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # faults make the nodes log: expected, not news
    yield
    logging.disable(logging.NOTSET)


def test_seed_2_of_five_nodes_reads_no_clock_of_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 2 (5 nodes, 40 steps) failed in a loaded run and passed alone: handshake
    timestamps and sync records read ``time.time()``, so a run depended on the
    machine. Now no eidetica code reads it during a run; each node's wall clock
    follows the MockClock."""
    readers: set[str] = set()
    machine = time.time

    def watched() -> float:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("eidetica"):
            readers.add(caller)
        return machine()

    monkeypatch.setattr(time, "time", watched)
    first = run_seed(2, nodes=5, steps=40)
    assert readers == set()
    assert run_seed(2, nodes=5, steps=40).trace == first.trace


class _Revocations(Simulation):
    """Notes, at the check, what a revocation race left: the entries some node holds
    and another lacks, and the entries waiting for parents, each with whether it is
    stored anywhere and whether it is dead wherever it is."""

    only_some: ClassVar[set[str]] = set()
    waiting: ClassVar[list[tuple[bool, bool]]] = []

    async def check(self) -> None:
        nodes = self.instances()
        held = [frozenset(inst.backend.tree_ids(self.tree)) for inst in nodes.values()]
        type(self).only_some = set(frozenset().union(*held) - held[0].intersection(*held))
        dead = [inst.liveness.of(self.tree).dead for inst in nodes.values()]
        for one, inst in enumerate(nodes.values()):
            for entry in inst.intake.waiting(self.tree):
                where = [n for n, ids in enumerate(held) if entry.id in ids]
                stored = bool(where) and one not in where
                type(self).waiting.append((stored, all(entry.id in dead[n] for n in where)))
        await super().check()


def test_seed_2_a_write_concurrent_with_its_revocation_stays_with_its_author() -> None:
    """Seed 2 (3 nodes, 40 steps): n2 committed while n0 revoked it. Nodes that knew
    of the revocation refuse that entry (remove wins) and n2 keeps it; before dead
    entries were left out of sync, the nodes never named the same tips and n2 offered
    it at every sync. The invariants compare the entries that count and the sync tips."""
    _Revocations.only_some = set()
    outcome = run_seed(2, nodes=3, steps=40, simulation=_Revocations)
    assert any(" revoke n2 " in line for line in outcome.trace)
    assert _Revocations.only_some, "some node holds a voided entry the others refused"


def test_seed_32_a_revoked_writers_chain_waits_and_is_dead_where_stored() -> None:
    """Seed 32 (3 nodes, 40 steps): the revoked n2 pushed a chain as it wrote it; n0
    refused its first entry and holds the rest (bounded by the holding area's caps).
    n2 offered the chain again at every sync until dead entries were left out."""
    _Revocations.waiting = []
    run_seed(32, nodes=3, steps=40, simulation=_Revocations)
    assert _Revocations.waiting, "the chain waits for its refused first entry"
    assert all(dead for _, dead in _Revocations.waiting)


def test_seed_10367_a_regranted_writers_dead_chain_may_wait() -> None:
    """Seed 10367 (3 nodes, 60 steps): n0 revoked n1, granted it write again and
    revoked it again; a chain of n1's is dead where it is stored and waits in another
    node's holding area. It counts nowhere, so it may wait (the check once said only a
    key that may not write may). Seed 10325 showed it until received batches took
    their tree's lock, which moved the schedule."""
    _Revocations.waiting = []
    outcome = run_seed(10367, nodes=3, steps=60, simulation=_Revocations)
    assert sum(" revoke n1 " in line for line in outcome.trace) == 2
    assert any(stored and dead for stored, dead in _Revocations.waiting)


def test_seed_22_a_node_only_others_relate_is_never_left_without_the_tree() -> None:
    """Seed 22 (3 nodes, 40 steps): n1 stopped relating the tree with everyone before
    it held it, and n0 relating it with n1 could not push it in (a node takes a tree
    it lacks only from a peer it asked). The workload now keeps every node able to
    come to hold it (``tests/sim/test_relations.py``), and the run settles."""
    outcome = run_seed(22, nodes=3, steps=40)
    assert any("n1 keeps syncing with n0: the nodes need it" in line for line in outcome.trace)


def test_seed_110_a_retry_queued_after_the_nodes_agreed_is_not_a_leak() -> None:
    """Seed 110 (3 nodes, 40 steps): a push in flight when the nodes agreed failed
    after, queueing one retry: retries are bounded by the queue's cap, not zero."""
    outcome = run_seed(110, nodes=3, steps=40)
    assert outcome.settle_seconds < 1_800  # and every invariant held, retries bounded


def test_seed_1504_retries_to_a_peer_gone_for_good_stay_bounded() -> None:
    """Seed 1504 (3 nodes, 60 steps): n1 went for good and n2 kept a retry per push
    to it, one for each write while it was away: the queue had no cap (now
    ``MAX_QUEUED``), and the settling waits only for retries to staying nodes."""
    outcome = run_seed(1504, nodes=3, steps=60)
    assert any("n1 goes away for good" in line for line in outcome.trace)
