"""eidetica: signed, content-addressed Merkle-DAG trees with CRDT documents, on trio.

The public names are imported on first use (PEP 562), not with the package: the
``eidetica`` command imports ``eidetica.cli``, and a command that a running node
runs for it needs none of the storage or the sync engine, whose imports take
most of a short command's time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eidetica import errors
from eidetica.errors import EideticaError

if TYPE_CHECKING:
    from eidetica.actors.sync import Sync, open_sync
    from eidetica.node import open_instance
    from eidetica.protocol.entry import Entry
    from eidetica.protocol.randomness import Randomness
    from eidetica.storage.docstore import DocStore
    from eidetica.storage.instance import CommitHook, Instance
    from eidetica.storage.transaction import AtomicOp
    from eidetica.storage.tree import Tree

_HOMES = {
    "AtomicOp": "eidetica.storage.transaction",
    "CommitHook": "eidetica.storage.instance",
    "DocStore": "eidetica.storage.docstore",
    "Entry": "eidetica.protocol.entry",
    "Instance": "eidetica.storage.instance",
    "Randomness": "eidetica.protocol.randomness",
    "Sync": "eidetica.actors.sync",
    "Tree": "eidetica.storage.tree",
    "open_instance": "eidetica.node",
    "open_sync": "eidetica.actors.sync",
}
"""Where each public name lives."""

__all__ = [
    "AtomicOp",
    "CommitHook",
    "DocStore",
    "EideticaError",
    "Entry",
    "Instance",
    "Randomness",
    "Sync",
    "Tree",
    "errors",
    "open_instance",
    "open_sync",
]


_SUBMODULES = ("aio", "blocking", "events")
"""Public submodules, reachable as ``eidetica.events`` after a bare ``import eidetica``."""


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"eidetica.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'eidetica' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
