"""The simulator's model of relations: when every node comes to hold the tree and
syncs it with the rest, so the workload removes only what leaves the nodes sound."""

from __future__ import annotations

from eidetica.testing.relations import Relations

NODES = ["n0", "n1", "n2"]


def related(*pairs: str) -> Relations:
    relations = Relations()
    for pair in pairs:
        a, b = pair.split(">")
        relations.add(a, b)
    return relations


def test_a_node_that_asked_a_holder_comes_to_hold_the_tree() -> None:
    relations = related("n1>n0", "n2>n1")  # n2 pulls from n1, which pulls from n0
    assert relations.sound(NODES, holders=["n0"])
    assert not relations.sound(NODES, holders=["n0"], without=("n2", "n1"))


def test_a_node_only_others_relate_never_takes_the_tree_in() -> None:
    relations = related("n0>n1", "n0>n2")  # n0 pushes, but n1 and n2 asked nobody
    assert not relations.sound(NODES, holders=["n0"])
    assert relations.sound(NODES, holders=NODES)  # once they hold it, one side suffices


def test_a_hub_takes_the_tree_in_from_a_holder_that_relates_it() -> None:
    relations = related("n1>n0", "n1>n2")
    assert relations.sound(NODES, holders=["n0"], hub="n2")
    assert not relations.sound(NODES, holders=["n0"], hub=None)


def test_nodes_the_relations_do_not_join_are_not_sound() -> None:
    relations = related("n1>n0")
    assert not relations.sound(NODES, holders=NODES)
    assert relations.sound(["n0", "n1"], holders=NODES)  # n2 gone: the rest are joined
    assert ("n1", "n0") in relations and ("n0", "n1") not in relations
    relations.remove("n1", "n0")
    assert not relations.sound(["n0", "n1"], holders=NODES)
