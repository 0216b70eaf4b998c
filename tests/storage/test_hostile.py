"""Validly signed entries with hostile contents: refused with typed errors, never a crash."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eidetica
from eidetica.errors import EideticaError, PermissionDenied
from eidetica.protocol.entry import SETTINGS_STORE, StoreWrite, create_entry
from eidetica.protocol.keys import SigningKey
from tests.builders import root_entry

OWNER = SigningKey(bytes(range(32)))
STRANGER = SigningKey(bytes([9] * 32))
ROOT = root_entry(OWNER)

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)
paths = st.lists(st.text(max_size=3), max_size=80)
ops = st.lists(
    st.tuples(st.sampled_from(["s", "d", "x"]), paths, anything).map(
        lambda t: [t[0], t[1], t[2]] if t[0] != "d" else [t[0], t[1]]
    ),
    max_size=4,
)
data = st.one_of(st.binary(max_size=64), ops.map(msgspec.msgpack.encode))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    author=st.sampled_from([OWNER, STRANGER]),
    store=st.sampled_from(["d", SETTINGS_STORE]),
    payload=data,
    height=st.integers(1, 3),
)
async def test_hostile_entries_raise_only_typed_errors(
    author: SigningKey, store: str, payload: bytes, height: int
) -> None:
    store_parents = (ROOT.id,) if store == SETTINGS_STORE else ()
    entry = create_entry(
        author,
        tree=ROOT.id,
        parents=[ROOT.id],
        height=height,
        stores=[StoreWrite(store, store_parents, payload)],
    )
    async with eidetica.open_instance(None) as inst:
        await inst.import_entries([ROOT])
        tree = await inst.open_tree(ROOT.id)
        before = await tree.tips()
        try:
            await inst.import_entries([entry])
        except EideticaError:
            assert await tree.tips() == before
        receipt = await inst.receive(ROOT.id, [entry.raw])
        stored_or_refused = len(receipt.stored) + len(receipt.rejected)
        assert stored_or_refused == 1 or entry.id in set(await tree.tips())
        for name in ("d",):  # whatever was stored still reads
            read: Any = (await tree.doc(name)).to_dict()
            assert isinstance(read, dict)
        assert isinstance(await tree.settings(), dict)


async def test_storing_a_local_entry_takes_only_this_nodes_entries() -> None:
    async with eidetica.open_instance(None) as inst:
        await inst.import_entries([ROOT])
        foreign = create_entry(
            STRANGER,
            tree=ROOT.id,
            parents=[ROOT.id],
            height=1,
            stores=[StoreWrite("d", (), b"\x90")],
        )
        with pytest.raises(PermissionDenied, match="receive"):
            await inst._store_local(await inst.open_tree(ROOT.id), foreign)
