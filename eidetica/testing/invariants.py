"""What must hold once a simulation healed and its timers ran.

Each check raises :class:`InvariantBroken` saying which promise broke, on which
node, with enough to find it in the trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eidetica.errors import EideticaError
from eidetica.protocol.entry import validate_entry
from eidetica.storage.instance import Instance


class InvariantBroken(AssertionError):
    """A promise of the engine did not hold in a simulated run."""


async def same_tips_and_documents(nodes: Mapping[str, Instance], tree: str) -> None:
    """Every node that syncs ``tree`` holds the same tips and reads the same documents."""
    seen: dict[str, tuple[object, ...]] = {}
    for name, inst in nodes.items():
        handle = await inst.open_tree(tree)
        written = {write.name for e in await handle.entries() for write in e.stores}
        stores = sorted(store for store in written if not store.startswith("_"))
        docs = tuple([(store, (await handle.doc(store)).to_dict()) for store in stores])
        seen[name] = (tuple(await handle.tips()), (await handle.settings(), docs))
    first_name, first = next(iter(seen.items()))
    for name, state in seen.items():
        if state[0] != first[0]:
            raise InvariantBroken(f"{name} holds tips {state[0]}, {first_name} {first[0]}")
        if state[1] != first[1]:
            raise InvariantBroken(f"{name} reads other documents than {first_name}")


def nothing_acknowledged_lost(
    nodes: Mapping[str, Instance], acknowledged: Sequence[tuple[str, str]]
) -> None:
    """Every entry a commit acknowledged (on any node) is stored on every node."""
    for name, inst in nodes.items():
        for author, entry_id in acknowledged:
            if inst.backend.get(entry_id) is None:
                raise InvariantBroken(f"{name} lacks {entry_id}, acknowledged on {author}")


def nothing_unverified(nodes: Mapping[str, Instance], tree: str) -> None:
    """Every stored entry's bytes, id and signature check out."""
    for name, inst in nodes.items():
        for entry in inst.backend.tree_entries(tree):
            try:
                validate_entry(entry.raw, entry.id)
            except EideticaError as exc:
                raise InvariantBroken(f"{name} stores {entry.id}, which fails: {exc}") from exc


def nothing_held(nodes: Mapping[str, Instance], tree: str) -> None:
    """No entry still waits for its parents: memory of the holding area is returned."""
    for name, inst in nodes.items():
        held = inst.intake.held(tree)
        if held:
            raise InvariantBroken(f"{name} still holds {held} entries waiting for parents")
