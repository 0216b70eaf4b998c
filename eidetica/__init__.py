"""eidetica: signed, content-addressed Merkle-DAG trees with CRDT documents, on trio."""

from eidetica import errors
from eidetica.actors.sync import Sync, open_sync
from eidetica.errors import EideticaError
from eidetica.node import open_instance
from eidetica.protocol.entry import Entry
from eidetica.storage.docstore import DocStore
from eidetica.storage.instance import CommitHook, Instance
from eidetica.storage.transaction import AtomicOp
from eidetica.storage.tree import Tree

__all__ = [
    "AtomicOp",
    "CommitHook",
    "DocStore",
    "EideticaError",
    "Entry",
    "Instance",
    "Sync",
    "Tree",
    "errors",
    "open_instance",
    "open_sync",
]
