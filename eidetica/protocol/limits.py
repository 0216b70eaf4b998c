"""Size limits on entries and messages, checked before anything else touches their contents.

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

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""One encoded message, in either codec; checked before decoding starts."""

MAX_ENTRIES_PER_BATCH = 1024
"""Entries in one message that asks nothing (``send_entries``, ``ack``, ``changed``):
what one peer can make a node check and store in one go without being asked."""

MAX_ENTRIES_PER_PAGE = 32 * 1024
"""Entries in one page of a pull (``sync_response``), the answer to a request of the
node's own. With the page's byte cap (8 MiB) the bytes bind first for any entry over
256 bytes, so a catch-up of tens of thousands of small entries takes one round trip;
the receiver stores a page ``MAX_ENTRIES_PER_BATCH`` entries at a time."""

MAX_IDS_PER_MESSAGE = 4096
"""Ids in one list of a message (tips, needs)."""

MAX_KEY_CHARS = 64
"""A public key string (``ed25519:`` and 44 base64 characters)."""

MAX_TEXT_CHARS = 1024
"""Free text in a message, such as an error's explanation."""

NONCE_BYTES = 32
"""A handshake challenge."""

EPHEMERAL_BYTES = 32
"""A handshake's ephemeral X25519 public key."""

MAC_BYTES = 32
"""The MAC of a request or answer under its session's key."""

MAX_FILTER_BYTES = 1024 * 1024
"""The bits of one Bloom filter summary."""

MAX_FILTER_HASHES = 32
"""Hash functions of one Bloom filter."""

MAX_WATCH_TREES = 1024
"""Trees one watch may name (and one answer to it report)."""

MAX_WATCH_SECONDS = 3600
"""The longest wait a watch may ask for; a server holds it less (``ServerLimits``)."""
