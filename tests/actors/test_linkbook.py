"""The rules of the link book, without a network: which of two links to keep, one
peer per link, and bounded memory whatever peers send."""

from __future__ import annotations

from eidetica.actors.engine import linkbook
from eidetica.actors.engine.linkbook import LinkBook, keep

REPLY = {"ws-in"}
SMALL, LARGE = "ed25519:A", "ed25519:B"


def test_the_link_dialled_by_the_smaller_key_is_kept_at_both_ends() -> None:
    # SMALL dialled LARGE: SMALL sees it as ws://large, LARGE as ws-in://1. And the
    # other way round for the link LARGE dialled.
    at_small = keep("ws://large", "ws-in://2", mine=SMALL, peer=LARGE, reply=REPLY)
    at_large = keep("ws://small", "ws-in://1", mine=LARGE, peer=SMALL, reply=REPLY)
    assert at_small == "ws://large"  # its own dial
    assert at_large == "ws-in://1"  # the small key's dial, as LARGE sees it
    # Offered the other way round, the same choice.
    assert keep("ws-in://2", "ws://large", mine=SMALL, peer=LARGE, reply=REPLY) == "ws://large"


def test_between_links_of_one_kind_the_newer_is_kept() -> None:
    assert keep("ws-in://1", "ws-in://7", mine=SMALL, peer=LARGE, reply=REPLY) == "ws-in://7"
    assert keep("ws://old", "ws://new", mine=LARGE, peer=SMALL, reply=REPLY) == "ws://new"


def test_one_peer_per_link_and_removed_peers_are_ignored() -> None:
    book = LinkBook(REPLY)
    assert book.offer(SMALL, "ws-in://1", "tree-a")
    assert not book.offer(SMALL, "ws-in://1", "tree-b")  # already linking back
    assert not book.offer(LARGE, "ws-in://1", "tree-c")  # someone else's link
    assert book.linked("ws-in://1") == {"tree-a", "tree-b"}
    book.removed.add(LARGE)
    assert not book.offer(LARGE, "ws-in://2", None)


def test_a_refused_link_is_not_tried_again_until_it_closes() -> None:
    book = LinkBook(REPLY)
    assert book.offer(SMALL, "ws-in://1", None)
    book.failed("ws-in://1", still_open=True)
    assert not book.offer(SMALL, "ws-in://1", None)
    book.closed("ws-in://1")
    assert not book.refused and not book.learned and not book.linking
    assert book.offer(SMALL, "ws-in://1", None)  # (a new link may reuse no name, but)
    book.failed("ws-in://9", still_open=False)  # closed meanwhile: nothing to remember
    assert "ws-in://9" not in book.refused


def test_the_book_stays_bounded_under_a_flood_of_offers() -> None:
    book = LinkBook(REPLY)
    for index in range(linkbook.MAX_OFFERS + 500):
        book.offer(f"ed25519:{index}", f"ws-in://{index}", "tree")
        book.failed(f"ws-in://{index}", still_open=True)
    assert len(book.refused) == linkbook.MAX_OFFERS
    assert len(book.linking) == 0 and len(book.learned) == 0


def test_a_link_that_refused_us_learns_no_trees_and_one_link_learns_a_bounded_number() -> None:
    book = LinkBook({"ws-in"})
    book.failed("ws-in://1", still_open=True)
    assert not book.offer("ed25519:A", "ws-in://1", "t")
    assert "ws-in://1" not in book.learned
    assert book.offer("ed25519:A", "ws-in://2", None)
    for n in range(linkbook.MAX_LEARNED + 100):
        book.offer("ed25519:A", "ws-in://2", f"t{n}")
    assert len(book.learned["ws-in://2"]) == linkbook.MAX_LEARNED
