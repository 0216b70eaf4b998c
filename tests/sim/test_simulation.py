"""The public simulator: seeded runs of several nodes under faults keep every
invariant, and the runner reports a failing seed with the command that replays it."""

from __future__ import annotations

import logging

import msgspec
import pytest

import eidetica
from eidetica.actors.engine.status import RetryStatus, SyncStatus
from eidetica.protocol.entry import StoreWrite, create_entry
from eidetica.protocol.keys import SigningKey
from eidetica.storage.backend import Record
from eidetica.testing import Faults, InvariantBroken, Outcome, Workload, invariants, run_seed
from eidetica.testing import sim as runner

QUICK_SEEDS = range(200)
"""Seeds CI runs on every change (short runs: 25 steps each, about half a second);
``python -m eidetica.testing.sim`` runs longer ones, and more."""


@pytest.fixture(autouse=True)
def _quiet() -> object:
    logging.disable(logging.CRITICAL)  # faults make the nodes log: expected, not news
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_a_seeded_run_under_every_fault_keeps_every_invariant(seed: int) -> None:
    outcome = run_seed(seed, nodes=3, steps=25)
    assert outcome.settle_seconds < 1_800
    assert any(
        line.endswith(f"settled after {outcome.settle_seconds:.3f}") for line in outcome.trace
    )


def test_five_nodes_in_memory_with_no_faults_agree_at_once() -> None:
    outcome = run_seed(1, nodes=5, steps=30, faults=Faults.parse("none"), sqlite=False)
    assert outcome.commits > 0 and outcome.crashes == 0 and outcome.faults == 0


def test_faults_parse_names_and_refuses_unknown_ones() -> None:
    assert Faults.parse("none") == Faults(*[False] * len(Faults.kinds()))
    assert Faults.parse("crashes,drops") == Faults(
        partitions=False,
        drops=True,
        delays=False,
        duplicates=False,
        slow_nodes=False,
        crashes=True,
        clock_jumps=False,
        departures=False,
    )
    with pytest.raises(ValueError, match="unknown faults \\['lightning'\\]"):
        Faults.parse("lightning")
    assert Workload.parse("hub") == Workload(permissions=False, relationships=False, hub=True)
    with pytest.raises(ValueError, match="unknown workload \\['chaos'\\]"):
        Workload.parse("chaos")


def test_the_runner_reports_a_failing_seed_with_its_replay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")

    def fake(seed: int, **options: object) -> Outcome:
        if seed == 3:
            raise InvariantBroken("n1 lacks 00ff, acknowledged on n0")
        return Outcome(seed, commits=2, settle_seconds=10.0)

    monkeypatch.setattr(runner, "run_seed", fake)
    assert runner.main(["--start", "2", "--seeds", "3", "--nodes", "4"]) == 1
    said = capsys.readouterr().out
    assert "seed 3 FAILED: InvariantBroken: n1 lacks 00ff, acknowledged on n0" in said
    assert (
        "replay: PYTHONHASHSEED=0 python -m eidetica.testing.sim --start 3 --seeds 1"
        " --nodes 4 --steps 60 --faults all --workload all"
    ) in said
    assert "3 seeds in" in said and "1 failed" in said


async def test_the_invariants_catch_nodes_that_disagree_or_lost_a_commit() -> None:
    async with eidetica.open_instance(None) as a, eidetica.open_instance(None) as b:
        tree = await a.create_tree(name="t")
        await b.import_entries(await tree.entries())
        nodes = {"a": a, "b": b}
        await invariants.same_entries_and_documents(nodes, tree.root_id)  # agree: no error
        async with tree.transaction() as op:
            op.doc("doc").set("only", "on a")
        assert op.entry is not None
        with pytest.raises(InvariantBroken, match=f"b syncs tips .*, a \\['{op.entry.id}'\\]"):
            await invariants.same_entries_and_documents(nodes, tree.root_id)
        with pytest.raises(InvariantBroken, match=f"b lacks {op.entry.id}, acknowledged on a"):
            invariants.nothing_acknowledged_lost(nodes, [("a", op.entry.id)], tree.root_id)


async def test_the_invariants_catch_an_entry_stored_without_its_permission() -> None:
    async with eidetica.open_instance(None) as a:
        tree = await a.create_tree(name="t")
        async with tree.transaction() as op:
            op.doc("doc").set("k", 1)
        assert op.entry is not None
        await invariants.nothing_unauthorized({"a": a}, tree.root_id)  # all the owner's
        forged = create_entry(
            SigningKey.generate(),
            tree=tree.root_id,
            parents=[op.entry.id],
            height=op.entry.height + 1,
            stores=[StoreWrite("doc", (op.entry.id,), op.entry.stores[0].data)],
        )
        a.backend.put([Record(forged, (tree.root_id,))])  # past verification, as a bug would
        with pytest.raises(InvariantBroken, match=f"a stores {forged.id}, which a fresh node"):
            await invariants.nothing_unauthorized({"a": a}, tree.root_id)


def test_memory_bounded_names_what_grew() -> None:
    quiet = SyncStatus([], {}, [], 0, 0, 0, [])
    invariants.memory_bounded({"n0": quiet}, peers=2)
    queued = msgspec.structs.replace(quiet, retries=[RetryStatus(1.0, "p", "t", 1)] * 5000)
    with pytest.raises(InvariantBroken, match="n0 queues 5000 retries, over 4096"):
        invariants.memory_bounded({"n0": queued}, peers=2)
    down = msgspec.structs.replace(quiet, crashed=["timer"])
    with pytest.raises(InvariantBroken, match="n0 left actors down after crashes"):
        invariants.memory_bounded({"n0": down}, peers=2)


def test_one_seed_replays_event_for_event_and_another_seed_differs() -> None:
    first, again, other = run_seed(21), run_seed(21), run_seed(22)
    assert first.trace == again.trace
    assert any(" commit " in line for line in first.trace)  # entry ids are in the trace
    assert first.trace != other.trace


def test_a_node_gone_for_good_leaves_the_others_agreeing_without_it() -> None:
    faults = Faults.parse("departures,partitions")
    departed = [
        outcome
        for outcome in (run_seed(seed, nodes=4, steps=60, faults=faults) for seed in range(6))
        if any("goes away for good" in line for line in outcome.trace)
    ]
    assert departed, "no run drew a departure: choose other seeds"


def test_tasks_bounded_allows_the_measured_counts_and_names_a_leak() -> None:
    invariants.tasks_bounded(27, nodes=3)
    invariants.tasks_bounded(53, nodes=5)
    with pytest.raises(InvariantBroken, match="500 tasks run for 3 nodes"):
        invariants.tasks_bounded(500, nodes=3)


def test_a_hub_under_either_policy_takes_the_tree_in_and_agrees() -> None:
    """The hub relates no tree; it holds the tree at the end only because its
    policy took it in from the nodes that relate it (the run settles only when every
    node holds it)."""
    hubs = set()
    for seed in range(12):
        outcome = run_seed(seed, nodes=3, steps=20, workload=Workload.parse("hub"))
        hubs |= {line.split("taking trees from ")[1] for line in outcome.trace if "hub" in line}
    assert hubs == {"anyone", "the run's nodes"}
