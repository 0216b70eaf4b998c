"""Size limits on entries, checked before anything else touches their contents.

The limits bound the memory and time a hostile peer can make a node spend on one
entry. They are part of the protocol: an entry over a limit is invalid everywhere.
"""

from __future__ import annotations

MAX_ENTRY_BYTES = 256 * 1024
"""Canonical bytes of one entry, signature included."""

MAX_PARENTS = 512
"""Tree-level parents of one entry (and store parents of one store write)."""

MAX_STORES = 64
"""Stores one entry may write to."""

MAX_STORE_NAME_CHARS = 128
"""Length of a store name."""

ENTROPY_BYTES = 16
"""Random bytes on a root entry, so equal settings never give equal tree ids."""

MAX_DOC_DEPTH = 64
"""Nesting depth of a document value, so folding cannot recurse without bound."""
