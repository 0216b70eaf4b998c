"""A node's randomness: the system's by default, replayable from a seed when injected."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import eidetica
from eidetica.protocol.randomness import Randomness


async def _tree_and_commit(randomness: Randomness | None) -> tuple[str, str, str]:
    async with eidetica.open_instance(None, randomness=randomness) as inst:
        tree = await inst.create_tree(name="notes")
        async with tree.transaction() as op:
            op.doc("log").set("first", 1)
        assert op.entry is not None
        return inst.public_key, tree.root_id, op.entry.id


def test_a_seed_fixes_every_draw() -> None:
    one, two = Randomness.seeded(7), Randomness.seeded(7)
    assert one.random_bytes(16) == two.random_bytes(16)
    assert one.token_hex() == two.token_hex()
    assert one.signing_key().public_key == two.signing_key().public_key
    assert one.random().random() == two.random().random()
    assert Randomness.seeded(7).random_bytes(16) != Randomness.seeded(8).random_bytes(16)


def test_the_default_is_the_systems_and_not_repeated() -> None:
    system = Randomness.system()
    assert not system.is_seeded
    assert Randomness.seeded(b"seed").is_seeded
    assert system.random_bytes(16) != system.random_bytes(16)
    assert system.signing_key().public_key != system.signing_key().public_key
    assert len(system.token_hex()) == 32  # as long as the uuid4 hex it replaces
    assert repr(Randomness.seeded("x")) == "Randomness.seeded('x')"


@pytest.mark.parametrize("seed", [1.5, True, None])
def test_a_seed_is_an_int_str_or_bytes(seed: object) -> None:
    with pytest.raises(TypeError):
        Randomness.seeded(seed)  # type: ignore[arg-type]


async def test_the_same_seed_makes_the_same_key_tree_and_entries() -> None:
    first = await _tree_and_commit(Randomness.seeded(42))
    second = await _tree_and_commit(Randomness.seeded(42))
    assert first == second


async def test_different_seeds_make_different_trees() -> None:
    first = await _tree_and_commit(Randomness.seeded(1))
    second = await _tree_and_commit(Randomness.seeded(2))
    assert first[0] != second[0]
    assert first[1] != second[1]


async def test_unseeded_nodes_differ() -> None:
    first = await _tree_and_commit(None)
    second = await _tree_and_commit(None)
    assert first[0] != second[0]
    assert first[1] != second[1]


async def test_the_same_key_with_other_entropy_makes_another_root() -> None:
    async with eidetica.open_instance(None, randomness=Randomness.seeded(3)) as inst:
        one = await inst.create_tree(name="notes")
        two = await inst.create_tree(name="notes")
    assert one.root_id != two.root_id


async def test_a_new_directory_takes_its_device_key_from_the_randomness(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = Randomness.seeded(9).signing_key().public_key
    with caplog.at_level(logging.WARNING):
        async with eidetica.open_instance(tmp_path / "a", randomness=Randomness.seeded(9)) as inst:
            assert inst.public_key == expected
            assert inst.randomness.is_seeded
    assert "seeded randomness" in caplog.text
    async with eidetica.open_instance(tmp_path / "a") as reopened:
        assert reopened.public_key == expected  # the key on disk, not a new one
        assert not reopened.randomness.is_seeded
