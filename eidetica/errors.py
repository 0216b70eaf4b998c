"""Typed exceptions shared by every layer.

Every exception eidetica raises derives from :class:`EideticaError`, so a caller can
catch the library's failures with one clause and still tell them apart by type.
"""

from __future__ import annotations


class EideticaError(Exception):
    """Base of every error this library raises."""


class InvalidEntry(EideticaError):
    """An entry failed validation; the message names the rule it broke."""


class MalformedEntry(InvalidEntry):
    """The bytes do not decode to an entry, or are not in canonical form."""


class EntryTooLarge(InvalidEntry):
    """The entry, or one of its parts, is over a limit in ``protocol.limits``."""


class BadSignature(InvalidEntry):
    """The signature does not verify against the author's key."""


class IdMismatch(InvalidEntry):
    """The id claimed for an entry is not the hash of its bytes."""


class ShapeError(InvalidEntry):
    """The entry is well-formed bytes but breaks a structural rule (parents, height...)."""


class MissingParents(InvalidEntry):
    """The entry names parents that are neither stored nor in the same batch."""

    def __init__(self, message: str, missing: frozenset[str]) -> None:
        super().__init__(message)
        self.missing = missing


class WrongTree(InvalidEntry):
    """The entry belongs to another tree than the one it was offered for."""


class PermissionDenied(InvalidEntry):
    """The author's key may not make this write under the tree's settings."""


class Voided(InvalidEntry):
    """The entry is valid but does not count: a revocation of its author that it does not
    build on is already known, and nothing offered with it builds on it."""


class InvalidSettings(InvalidEntry):
    """A settings write would leave an auth map with a bad key or permission name."""


class InvalidPermission(EideticaError):
    """A permission name is not one of ``read``, ``write`` or ``admin``."""


class InvalidKey(EideticaError):
    """A public key string is not of the form ``ed25519:<base64 of 32 bytes>``."""


class InvalidValue(EideticaError):
    """A value cannot be stored in a document (not JSON-like, or a non-finite float)."""


class InvalidPath(EideticaError):
    """A document path is empty or has an empty segment."""


class InvalidStoreName(EideticaError):
    """A store name is empty, too long, or reserved (names starting with ``_``)."""


class TreeNotFound(EideticaError):
    """This node holds no tree with that root id."""


class EntryNotFound(EideticaError):
    """This node holds no entry with that id."""


class StorageError(EideticaError):
    """The storage backend failed or holds data it cannot read."""


class TransactionClosed(EideticaError):
    """A transaction was used after it committed or was discarded."""


class ProtocolError(EideticaError):
    """A peer sent something the protocol does not allow; ``code`` names it on the wire."""

    code = "malformed"


class MalformedMessage(ProtocolError):
    """The bytes are not a valid message: bad syntax, a wrong type, a value out of bounds."""

    code = "malformed"


class MessageTooLarge(ProtocolError):
    """The message is over ``limits.MAX_MESSAGE_BYTES``; it was not decoded."""

    code = "too-large"


class UnknownVersion(ProtocolError):
    """The envelope names a protocol version this node does not speak."""

    code = "unknown-version"


class UnknownMessage(ProtocolError):
    """The message type is not one this node knows, or not one it expects here."""

    code = "unknown-message"


class Unauthenticated(ProtocolError):
    """A request came without a proven key (no handshake, or an unknown session)."""

    code = "unauthenticated"


class BadMac(Unauthenticated):
    """A request or answer under a session carries no MAC, or a wrong one: someone who
    does not hold the session's key (a relay, say) made or changed it. A node answers
    such a request exactly as it answers one under an unknown session, so that the
    sender learns nothing more; a link that gets such an answer fails that request."""


class HandshakeFailed(Unauthenticated):
    """The peer did not prove its key: bad signature, replay, expired, or out of order."""


class HandshakeBusy(HandshakeFailed):
    """The node cannot take this handshake now (too many from this source, or no room for
    another session that would not push out someone else's); the peer may try later.

    Its wire code is ``unauthenticated``, like any handshake that yields no session: the
    wire's codes are a fixed list, and the message starts with "busy"."""


class WatchBusy(ProtocolError):
    """The node holds as many watches as it takes (from this session, or in all) and
    answers this one at once; the watcher tries again later. Its wire code is
    ``busy`` (HTTP 503)."""

    code = "busy"


class TreeUnavailable(ProtocolError):
    """No tree with that id for this peer: absent, or the peer may not read it (the two
    answers are the same on purpose)."""

    code = "not-found"


class QuotaExceeded(ProtocolError):
    """A peer brought in more trees, or bytes of them, than this node lets one peer."""

    code = "quota"


class RemoteError(ProtocolError):
    """The peer answered with an error; ``code`` is the code it sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer answered {code}: {message}")
        self.code = code


class TransportError(EideticaError):
    """A request could not be carried to a peer or its answer back."""


class Unreachable(TransportError):
    """No peer answers at that address (not listening, partitioned, or gone)."""


class SyncError(EideticaError):
    """The sync engine could not do what was asked (not running, unknown peer...)."""


class UnknownPeer(SyncError):
    """The engine does not know that peer: connect to it or add it first."""


class NotShared(SyncError):
    """The tree is not synced with that peer: ``add_tree_sync`` first."""


class PeerNotLinked(SyncError):
    """The peer is known but has no link now (being dialled, or gone): try later."""


class NotInTrio(EideticaError):
    """eidetica's async API was called outside trio (from asyncio, or from a plain
    thread); it fails before doing anything. From asyncio use ``eidetica.aio``, from
    plain threads ``eidetica.blocking``: both run the node in a trio thread of its own."""


class InstanceClosed(EideticaError):
    """An instance of ``eidetica.blocking`` or ``eidetica.aio`` was used after it was
    closed (or while it closed): its node thread runs no more calls."""


def first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or ``error`` itself.

    trio wraps what a nursery's tasks raise in groups; where exactly one failure is
    expected, this is the one to report or re-raise.
    """
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
