"""The engine's invariants under any order of events (hypothesis state machine).

Random commands, links coming up and closing, dials failing and retries falling due
are fed to one engine; after every step:
- every reply is answered at most once, and one not answered yet is held by a dial
  still out (its outcome answers it);
- a peer has at most one live link, and no link serves two peers;
- a removed peer never comes back by itself: only a chosen link or ``add_peer``;
- no effect names a peer the engine does not know (or, to stop it, knew).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eidetica.actors.engine import effects as fx
from eidetica.actors.engine import events as ev
from eidetica.actors.engine.jobs import SyncJob
from eidetica.actors.engine.retries import RetryItem
from tests.actors.engine_helpers import TREE, FakeReply, engine

PEERS = ["ed25519:A", "ed25519:B", "ed25519:Z"]
ADDRESSES = ["ws://a", "ws://b", "ws-in://1", "ws-in://2", "http://h"]
peers = st.sampled_from(PEERS)
addresses = st.sampled_from(ADDRESSES)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine, effects = engine()
        self.now = 0.0
        self.replies: list[FakeReply] = []
        self.dials: list[fx.Dial] = []
        """Dials out: each will come back as a link up or a failure."""
        self.live: dict[str, str] = {}
        """Peer -> the link its actor was last handed."""
        self.removed: set[str] = set()
        self._apply(effects)

    # Driving the engine.

    def _feed(self, event: ev.Event, before: set[str] | None = None) -> None:
        known = set(self.engine.peers) if before is None else before
        self.now += 1.0
        effects = self.engine.handle(event, self.now)
        self._check_names(effects, known)
        self._apply(effects)

    def _apply(self, effects: list[fx.Effect]) -> None:
        for effect in effects:
            match effect:
                case fx.Answer(reply, value):
                    reply.set(value)
                case fx.Fail(reply, error):
                    reply.fail(error)
                case fx.Dial():
                    self.dials.append(effect)
                case fx.UseLink(peer, address):
                    self.live[peer] = address
                case fx.Queue(job=SyncJob(reply=reply)) if reply is not None:
                    reply.set(None)  # the peer actor answers it when the job is done
                case fx.StopPeer(peer):
                    self.live.pop(peer, None)

    def _check_names(self, effects: list[fx.Effect], known_before: set[str]) -> None:
        known = set(self.engine.peers)
        for effect in effects:
            if isinstance(effect, fx.Queue | fx.UseLink | fx.StartPeer | fx.StopDial):
                assert effect.peer in known, effect
            if isinstance(effect, fx.StopPeer):
                assert effect.peer in known_before and effect.peer not in known, effect

    def _reply(self) -> FakeReply:
        reply = FakeReply()
        self.replies.append(reply)
        return reply

    # Commands.

    @rule(peer=peers, address=addresses)
    def add_peer(self, peer: str, address: str) -> None:
        self.removed.discard(peer)
        self._feed(ev.AddPeer(peer, address, self._reply()))

    @rule(address=addresses)
    def connect(self, address: str) -> None:
        self._feed(ev.ConnectToPeer(address, self._reply()))

    @rule(peer=peers)
    def remove_peer(self, peer: str) -> None:
        if peer in self.engine.peers:
            self.removed.add(peer)
        self._feed(ev.RemovePeer(peer, self._reply()))

    @rule(peer=peers)
    def relate(self, peer: str) -> None:
        self._feed(ev.CreateRelationship(peer, TREE, self._reply()))

    @rule(peer=peers)
    def sync_with(self, peer: str) -> None:
        self._feed(ev.SyncWithPeer(peer, self._reply()))

    @rule(peer=peers)
    def send_entries(self, peer: str) -> None:
        self._feed(ev.SendEntries(peer, TREE, ("e",), self._reply()))

    # What the network and the actors do.

    @precondition(lambda self: self.dials)
    @rule(data=st.data(), ok=st.booleans(), who=peers)
    def a_dial_ends(self, data: st.DataObject, ok: bool, who: str) -> None:
        dial = self.dials.pop(data.draw(st.integers(0, len(self.dials) - 1)))
        if ok and dial.peer in (None, who):
            if dial.chosen:  # the operator dialled it: a removed peer may come back so
                self.removed.discard(who)
            self._feed(ev.LinkUp(dial.address, who, dial.reply, dial.chosen))
        else:
            self._feed(
                ev.DialFailed(dial.address, dial.peer, OSError("no"), dial.reply, dial.chosen)
            )

    @rule(peer=peers, address=addresses, tree=st.none() | st.just(TREE))
    def a_peer_reaches_us(self, peer: str, address: str, tree: str | None) -> None:
        self._feed(ev.PeerReachable(peer, None if address.startswith("http") else address, tree))

    @rule(address=addresses)
    def a_link_closes(self, address: str) -> None:
        self._feed(ev.LinkClosed(address, "gone"))

    @rule(peer=peers)
    def a_retry_falls_due(self, peer: str) -> None:
        self._feed(ev.RetryDue(RetryItem("r", peer, TREE, ("e",))))

    @rule(peer=peers)
    def a_tree_is_taken_in(self, peer: str) -> None:
        self._feed(ev.TreeTaken(peer, TREE))

    @rule()
    def timers(self) -> None:
        self._feed(ev.SyncAll())
        self._feed(ev.CheckConnections())

    # Invariants.

    @invariant()
    def every_reply_is_answered_once_or_awaits_its_dial(self) -> None:
        waiting = {id(dial.reply) for dial in self.dials if dial.reply is not None}
        for reply in self.replies:
            assert len(reply.answers) <= 1, reply.answers
            assert len(reply.answers) == 1 or id(reply) in waiting

    @invariant()
    def one_live_link_per_peer_and_one_peer_per_link(self) -> None:
        linked = {key: r.link for key, r in self.engine.peers.items() if r.up}
        assert all(link is not None for link in linked.values())
        assert len(set(linked.values())) == len(linked)
        for key, link in linked.items():
            assert self.live.get(key) == link  # the actor was handed exactly this one

    @invariant()
    def removed_peers_stay_away_unless_dialled_on_purpose(self) -> None:
        assert not self.removed & set(self.engine.peers)
        assert self.removed <= self.engine.removed


EngineMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_engine_machine = EngineMachine.TestCase
