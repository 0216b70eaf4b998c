"""Regression tests for what the simulator found, each named after the seed that
found it (``python -m eidetica.testing.sim --start SEED --seeds 1 ...`` replays it)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from eidetica.protocol.auth import Permission, permission_of
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
    """Notes, at the check, the entries some node holds and another lacks."""

    only_some: ClassVar[set[str]] = set()
    waiting: ClassVar[list[tuple[str, bool]]] = []

    async def check(self) -> None:
        nodes = self.instances()
        held = [frozenset(inst.backend.tree_ids(self.tree)) for inst in nodes.values()]
        type(self).only_some = set(frozenset().union(*held) - held[0].intersection(*held))
        voided = set().union(*(inst.voided(self.tree) for inst in nodes.values()))
        assert type(self).only_some <= voided
        for inst in nodes.values():
            settings = await (await inst.open_tree(self.tree)).settings()
            type(self).waiting += [
                (e.id, (permission_of(settings, e.author) or 0) >= Permission.WRITE)
                for e in inst.intake.waiting(self.tree)
            ]
        await super().check()


def test_seed_2_a_write_concurrent_with_its_revocation_stays_with_its_author() -> None:
    """Seed 2 (3 nodes, 40 steps): n2 committed while n0 revoked it. Nodes that knew
    of the revocation refuse that entry (remove wins) and n2 keeps it, so the nodes
    never hold the same tips; the invariants compare the entries that count."""
    _Revocations.only_some = set()
    outcome = run_seed(2, nodes=3, steps=40, simulation=_Revocations)
    assert any(" revoke n2 " in line for line in outcome.trace)
    assert _Revocations.only_some, "some node holds a voided entry the others refused"


def test_seed_32_a_revoked_writers_chain_waits_and_is_never_stored() -> None:
    """Seed 32 (3 nodes, 40 steps): the revoked n2 offers its chain again at each
    sync; its first entry is refused and the rest wait in n0's holding area (bounded
    by its caps). Nothing of it is stored, and only a key that may not write waits."""
    _Revocations.waiting = []
    run_seed(32, nodes=3, steps=40, simulation=_Revocations)
    assert _Revocations.waiting, "the chain waits for its refused first entry"
    assert not any(may_write for _, may_write in _Revocations.waiting)


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
