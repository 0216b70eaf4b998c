"""The sync protocol's messages: frozen, typed, in one tagged union.

Every message travels in an :class:`Envelope` that names the protocol version and,
for transports that multiplex, a request id. Field types carry their limits
(:mod:`eidetica.protocol.limits`), so a message that decodes is already within
bounds; see ``docs/protocol.md`` for each message with a JSON example.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from eidetica.protocol import limits

PROTOCOL_VERSION = 3

EntryId = Annotated[str, msgspec.Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]
PublicKey = Annotated[str, msgspec.Meta(max_length=limits.MAX_KEY_CHARS)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=limits.NONCE_BYTES, max_length=limits.NONCE_BYTES)]
Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Ephemeral = Annotated[
    bytes, msgspec.Meta(min_length=limits.EPHEMERAL_BYTES, max_length=limits.EPHEMERAL_BYTES)
]
Ids = Annotated[tuple[EntryId, ...], msgspec.Meta(max_length=limits.MAX_IDS_PER_MESSAGE)]
RawEntry = Annotated[bytes, msgspec.Meta(max_length=limits.MAX_ENTRY_BYTES)]
RawEntries = Annotated[tuple[RawEntry, ...], msgspec.Meta(max_length=limits.MAX_ENTRIES_PER_BATCH)]
PageEntries = Annotated[tuple[RawEntry, ...], msgspec.Meta(max_length=limits.MAX_ENTRIES_PER_PAGE)]
Text = Annotated[str, msgspec.Meta(max_length=limits.MAX_TEXT_CHARS)]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every message: frozen, strict, tagged by its ``type`` field."""


# Handshake (see handshake.py): four messages; both sides prove their key and agree
# on a session key that never crosses the wire.


class HandshakeInit(_Message, frozen=True, tag="handshake_init"):
    """Initiator -> responder: who I claim to be, a challenge for you, and my half of
    the key exchange."""

    public_key: PublicKey
    challenge: Nonce
    ephemeral: Ephemeral
    """A fresh X25519 public key, for this handshake only."""
    time: int
    """The initiator's clock, in whole seconds; the responder checks it is recent."""


class HandshakeReply(_Message, frozen=True, tag="handshake_reply"):
    """Responder -> initiator: who I am, my challenge, my half of the key exchange, and
    my signature over the transcript."""

    public_key: PublicKey
    challenge: Nonce
    ephemeral: Ephemeral
    """A fresh X25519 public key, for this handshake only."""
    signature: Signature


class HandshakeFinish(_Message, frozen=True, tag="handshake_finish"):
    """Initiator -> responder: my signature over the transcript, answering your challenge."""

    signature: Signature
    challenge: Nonce
    """The responder's challenge being answered, so the responder can find the handshake."""


class HandshakeDone(_Message, frozen=True, tag="handshake_done"):
    """Responder -> initiator: the handshake succeeded; ``session`` names it from now on."""

    session: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


# Reconciliation (see reconcile.py).


class Summary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Bloom filter of the sender's entries of height ``min_height`` and above."""

    min_height: Annotated[int, msgspec.Meta(ge=0)]
    hashes: Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_FILTER_HASHES)]
    salt: Annotated[bytes, msgspec.Meta(max_length=16)]
    bits: Annotated[bytes, msgspec.Meta(max_length=limits.MAX_FILTER_BYTES)]


class SyncRequest(_Message, frozen=True, tag="sync"):
    """Initiator -> responder: my tips of ``tree`` and what I hold near them; send me
    what I lack, and tell me what you lack.

    With a ``cursor`` and no ``summary``, what I hold is said by the cursor alone: I
    hold the ancestors of my tips you know and of the cursor, which we both held
    after our last sync. If you hold neither all of the cursor nor all of my tips,
    answer ``ask_summary``."""

    tree: EntryId
    tips: Ids
    summary: Summary | None
    """What the initiator holds near its tips; None when it relies on ``cursor``."""
    haves: Ids = ()
    """Entries the initiator holds below the summary (and ones it believes common)."""
    cursor: Ids = ()
    """Entries both sides held after their last complete sync (the initiator's
    belief): with no summary, the responder walks down to them and no further."""
    need: Ids = ()
    """Ids the initiator learned it lacks (parents of entries it received)."""
    resume: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    """The ``resume`` of the previous page's response, to continue that plan."""


class SyncResponse(_Message, frozen=True, tag="sync_response"):
    """Responder -> initiator: a page of entries the initiator lacks, parents first."""

    tree: EntryId
    tips: Ids
    entries: PageEntries
    """At most :data:`~eidetica.protocol.limits.MAX_ENTRIES_PER_PAGE` entries, and at
    most ``reconcile.PAGE_BYTES`` of them."""
    more: bool
    """More entries follow: ask again (with the new tips) for the next page."""
    summary: Summary | None = None
    """The responder's own summary, when it lacks some of the initiator's tips."""
    haves: Ids = ()
    """Entries the responder holds below its summary."""
    resume: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    """With ``more``: send this back to get the next page of the same plan."""
    remaining: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = 0
    """Entries the responder plans to send after this page: a hint for showing
    progress, never trusted for anything else (older nodes leave it 0)."""
    ask_summary: bool = False
    """The request had no summary and its cursor named entries the responder does not
    hold (nor did it hold every tip): nothing was sent; ask again with a summary."""


class SendEntries(_Message, frozen=True, tag="send_entries"):
    """Either side -> the other: entries the receiver lacks, parents first (the seed's
    SendEntries). Also used to push a new commit."""

    tree: EntryId
    entries: RawEntries
    need: Ids = ()
    """Ids the sender learned it lacks; the answer carries them (and their ancestry)."""


class Ack(_Message, frozen=True, tag="ack"):
    """Answer to SendEntries: what was stored, rejected and held, and what is needed."""

    stored: Annotated[int, msgspec.Meta(ge=0)]
    rejected: Annotated[int, msgspec.Meta(ge=0)]
    held: Annotated[int, msgspec.Meta(ge=0)]
    need: Ids = ()
    """Parents the receiver still lacks: send them."""
    entries: RawEntries = ()
    """Entries the sender asked for with ``need``."""


# Watching (see actors/watching.py): a long poll for a client whose link carries no
# requests back to it (HTTP), so that it hears of new entries as soon as a push would.


class WatchedTree(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tree of a watch, and the tips the watcher holds or has heard of."""

    tree: EntryId
    tips: Ids


class TreeNews(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tree of a :class:`Changed`: the server's tips, and the entries the watcher
    lacks (parents first) when the server could tell them exactly and they are few;
    otherwise none, and the watcher syncs the tree."""

    tree: EntryId
    tips: Ids
    entries: RawEntries = ()


class Watch(_Message, frozen=True, tag="watch"):
    """Client -> server: answer once you hold, of one of these trees, a tip I do not
    name; or after ``wait`` seconds at most (sooner if your own bound is shorter)."""

    trees: Annotated[tuple[WatchedTree, ...], msgspec.Meta(max_length=limits.MAX_WATCH_TREES)]
    wait: Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_WATCH_SECONDS)]
    """Seconds the client waits for the answer."""


class Changed(_Message, frozen=True, tag="changed"):
    """Answer to Watch: the watched trees the client may read for which the server
    holds a tip the client did not name; none if the wait ended first."""

    trees: Annotated[tuple[TreeNews, ...], msgspec.Meta(max_length=limits.MAX_WATCH_TREES)]


class ErrorReply(_Message, frozen=True, tag="error"):
    """A typed failure: ``code`` is one of :data:`ERROR_CODES`."""

    code: Annotated[str, msgspec.Meta(max_length=32)]
    message: Text


ERROR_CODES = (
    "malformed",
    "unknown-version",
    "unknown-message",
    "too-large",
    "unauthenticated",
    "forbidden",
    "not-found",
    "rejected",
    "internal",
    "busy",
)

Message = (
    HandshakeInit
    | HandshakeReply
    | HandshakeFinish
    | HandshakeDone
    | SyncRequest
    | SyncResponse
    | SendEntries
    | Ack
    | Watch
    | Changed
    | ErrorReply
)

ANSWERS: frozenset[str] = frozenset(
    kind.__struct_config__.tag  # type: ignore[misc]
    for kind in (HandshakeReply, HandshakeDone, SyncResponse, Ack, Changed, ErrorReply)
)
"""The ``type`` tags of answers; every other message is a request. A link that
carries requests both ways (WebSocket) tells an answer from a request by this."""


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What goes on the wire: a version, an optional request id, session and MAC, one
    message."""

    v: int
    body: Message
    id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    session: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)] | None = None
    """The handshake's session, naming the proven key a request comes from."""
    mac: Annotated[bytes, msgspec.Meta(max_length=limits.MAC_BYTES)] = b""
    """The body's MAC under the session's key (:mod:`eidetica.protocol.mac`): on every
    request that names a session, and on the answer to it. It does not cover ``id``,
    which a transport may change."""
