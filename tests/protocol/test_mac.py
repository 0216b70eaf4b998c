"""MACs under a session: bound to the key, the session, the direction, the body, and
(for an answer) the request; the same whichever codec carried the body."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.protocol.mac import MAC_DOMAIN, answer_mac, matches, request_mac
from eidetica.protocol.messages import Ack, ErrorReply, Message, SendEntries, Summary, SyncRequest

KEY = bytes(range(32))
SESSION = bytes([7] * 32)
TREE = "ab" * 32
SUMMARY = Summary(min_height=0, hashes=1, salt=b"", bits=b"\x01")
REQUEST = SyncRequest(tree=TREE, tips=(TREE,), summary=SUMMARY)


def test_a_request_mac_depends_on_the_key_the_session_and_every_byte_of_the_body() -> None:
    mac = request_mac(KEY, SESSION, REQUEST)
    assert len(mac) == 32
    assert request_mac(KEY, SESSION, REQUEST) == mac
    others = [
        request_mac(bytes(32), SESSION, REQUEST),
        request_mac(KEY, bytes(32), REQUEST),
        request_mac(KEY, SESSION, msgspec.structs.replace(REQUEST, need=(TREE,))),
        request_mac(KEY, SESSION, SendEntries(tree=TREE, entries=())),
    ]
    assert mac not in others
    assert len(set(others)) == len(others)


def test_an_answer_mac_is_bound_to_its_request_and_is_never_a_request_mac() -> None:
    """A relay cannot hand back an answer to another request, nor pass an answer off
    as a request (or the reverse)."""
    body = Ack(stored=0, rejected=0, held=0)
    first = request_mac(KEY, SESSION, REQUEST)
    second = request_mac(KEY, SESSION, msgspec.structs.replace(REQUEST, resume=b"r"))
    assert answer_mac(KEY, SESSION, first, body) != answer_mac(KEY, SESSION, second, body)
    assert answer_mac(KEY, SESSION, first, body) != request_mac(KEY, SESSION, body)


def test_the_mac_is_keyed_blake2b_over_the_documented_layout() -> None:
    body = msgspec.msgpack.encode(REQUEST)
    expected = hashlib.blake2b(MAC_DOMAIN + b"\x01" + SESSION + body, key=KEY, digest_size=32)
    assert request_mac(KEY, SESSION, REQUEST) == expected.digest()
    mac = expected.digest()
    answer = ErrorReply(code="not-found", message="no")
    data = MAC_DOMAIN + b"\x02" + SESSION + mac + msgspec.msgpack.encode(answer)
    wanted = hashlib.blake2b(data, key=KEY, digest_size=32).digest()
    assert answer_mac(KEY, SESSION, mac, answer) == wanted


def test_matches_takes_only_the_exact_mac() -> None:
    mac = request_mac(KEY, SESSION, REQUEST)
    assert matches(mac, mac)
    assert not matches(mac, b"")
    assert not matches(mac, mac[:31])
    assert not matches(mac, mac + b"\x00")
    assert not matches(mac, bytes([mac[0] ^ 1]) + mac[1:])


_ids = st.lists(st.sampled_from([TREE, "cd" * 32]), max_size=3).map(tuple)
_bodies: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        SyncRequest,
        tree=st.just(TREE),
        tips=_ids,
        summary=st.just(SUMMARY),
        haves=_ids,
        need=_ids,
        resume=st.binary(max_size=16),
    ),
    st.builds(
        SendEntries,
        tree=st.just(TREE),
        entries=st.lists(st.binary(max_size=40), max_size=3).map(tuple),
        need=_ids,
    ),
    st.builds(ErrorReply, code=st.just("rejected"), message=st.text(max_size=40)),
)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda codec: codec.name)
@given(body=_bodies)
def test_the_mac_of_a_body_is_the_same_after_either_codec_carried_it(
    codec: Codec, body: Message
) -> None:
    """JSON over HTTP, MessagePack over WebSocket: the receiver re-encodes the decoded
    body and gets the bytes the sender's MAC covered."""
    carried = codec.decode(codec.encode(body, 7, SESSION)).body
    assert request_mac(KEY, SESSION, carried) == request_mac(KEY, SESSION, body)
