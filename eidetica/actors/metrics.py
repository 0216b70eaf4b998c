"""A node's metrics, in Prometheus's text format (``GET /metrics``).

Each node has a registry of its own, never prometheus-client's global one: several
nodes may share one process (tests, an application syncing two instances), and each
must count only its own work.

Two sources feed it. What happens is counted as it happens by a listener on the
node's event bus (:meth:`NodeMetrics.on_event`): entries and bytes sent and received,
sync rounds by outcome and their durations, failed pushes, dropped retries. What *is*
is read at scrape time from the node's typed status by a collector: peers by state,
the retry queue, refusals by reason, actor restarts and crashes, the holding area,
held watches, trees synced. No label takes a peer's key or a tree's id, so the number
of series stays fixed however many peers come and go; ``eidetica status`` and the
status page give the detail per peer and tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import eidetica.events as news
from eidetica.actors.engine.status import SyncStatus
from eidetica.protocol.intake import Intake

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of the text format."""

PEER_STATES = ("dialling", "up", "lost", "down")
"""Every state a peer can be in: each is reported, zeros included."""

SYNC_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NodeMetrics:
    """One node's registry, its counters, and the collector of its state."""

    def __init__(self, status: Callable[[], SyncStatus], intake: Intake) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.entries_received = Counter(
            "eidetica_entries_received",
            "Entries received from peers and stored (syncs, pushes, watches).",
            registry=registry,
        )
        self.bytes_received = Counter(
            "eidetica_entries_received_bytes",
            "Encoded bytes of the entries received and stored.",
            registry=registry,
        )
        self.entries_sent = Counter(
            "eidetica_entries_sent", "Entries sent to peers (pushes and syncs).", registry=registry
        )
        self.bytes_sent = Counter(
            "eidetica_entries_sent_bytes", "Encoded bytes of the entries sent.", registry=registry
        )
        self.sync_rounds = Counter(
            "eidetica_sync_rounds",
            "Sync rounds of one tree with one peer, by outcome: complete (both sides held"
            " the same tips at the end), partial, or failed.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("complete", "partial", "failed"):
            self.sync_rounds.labels(outcome)
        self.sync_seconds = Histogram(
            "eidetica_sync_duration_seconds",
            "How long sync rounds that finished took.",
            buckets=SYNC_SECONDS_BUCKETS,
            registry=registry,
        )
        self.pushes_failed = Counter(
            "eidetica_pushes_failed",
            "Pushes that failed and went to the retry queue.",
            registry=registry,
        )
        self.retries_dropped = Counter(
            "eidetica_retries_dropped",
            "Queued pushes given up (the periodic sync carries their entries).",
            registry=registry,
        )
        self.missed = Counter(
            "eidetica_events_missed",
            "Events the metrics listener was told it missed.",
            registry=registry,
        )
        registry.register(_StateCollector(status, intake))

    def on_event(self, event: news.Event) -> None:
        """The bus listener: count what happened. Quick, and never raises."""
        match event:
            case news.EntriesReceived(count=count, bytes=size):
                self.entries_received.inc(count)
                self.bytes_received.inc(size)
            case news.EntriesSent(count=count, bytes=size):
                self.entries_sent.inc(count)
                self.bytes_sent.inc(size)
            case news.SyncFinished(complete=complete, seconds=seconds):
                self.sync_rounds.labels("complete" if complete else "partial").inc()
                self.sync_seconds.observe(max(0.0, seconds))
            case news.SyncFailed():
                self.sync_rounds.labels("failed").inc()
            case news.PushFailed():
                self.pushes_failed.inc()
            case news.RetryDropped():
                self.retries_dropped.inc()
            case news.Missed(count=count):
                self.missed.inc(count)
            case _:
                pass

    def exposition(self) -> bytes:
        """The registry in the text format."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges (and counters kept elsewhere) read from the node's status at scrape."""

    def __init__(self, status: Callable[[], SyncStatus], intake: Intake) -> None:
        self._status = status
        self._intake = intake

    def describe(self) -> list[Metric]:
        return []  # unchecked: the names are fixed, and reading status needs the engine

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        peers = GaugeMetricFamily("eidetica_peers", "Known peers, by state.", labels=["state"])
        by_state = dict.fromkeys(PEER_STATES, 0)
        for peer in status.peers.values():
            by_state[peer.state] = by_state.get(peer.state, 0) + 1
        for state, count in sorted(by_state.items()):
            peers.add_metric([state], count)
        yield peers
        yield GaugeMetricFamily(
            "eidetica_retries_queued",
            "Failed pushes waiting to be tried again.",
            value=len(status.retries),
        )
        refusals = CounterMetricFamily(
            "eidetica_refusals",
            "Requests and connections refused, by reason: an error code of the protocol,"
            " 'connection' (the connection caps), or 'watch-busy'.",
            labels=["reason"],
        )
        for reason, count in sorted(status.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        restarts = CounterMetricFamily(
            "eidetica_actor_restarts",
            "Restarts of actors after a crash (servers: after their socket failed).",
            labels=["actor"],
        )
        for actor, count in sorted(status.restarts.items()):
            restarts.add_metric([actor], count)
        yield restarts
        yield GaugeMetricFamily(
            "eidetica_actors_crashed",
            "Actors that kept crashing and were left down.",
            value=len(status.crashed),
        )
        yield GaugeMetricFamily(
            "eidetica_servers_listening",
            "Servers listening now.",
            value=sum(1 for server in status.servers if server.listening),
        )
        yield GaugeMetricFamily(
            "eidetica_intake_held_entries",
            "Entries waiting in the holding area for their parents.",
            value=self._intake.held_entries,
        )
        yield GaugeMetricFamily(
            "eidetica_intake_held_bytes",
            "Bytes of the entries in the holding area.",
            value=self._intake.held_bytes,
        )
        yield CounterMetricFamily(
            "eidetica_intake_dropped",
            "Held entries dropped because a quota or the holding area was full.",
            value=self._intake.dropped,
        )
        yield GaugeMetricFamily(
            "eidetica_watches_held",
            "Watches (long polls) held for HTTP clients.",
            value=status.watches.held,
        )
        yield CounterMetricFamily(
            "eidetica_notices_dropped",
            "Notices to the engine dropped because its inbox was full.",
            value=status.dropped_notices,
        )
        yield GaugeMetricFamily(
            "eidetica_trees_synced",
            "Trees this node syncs with some peer.",
            value=len(status.trees),
        )
        lagging = sum(
            1 for tree in status.trees.values() for lag in tree.peers.values() if not lag.in_step
        )
        yield GaugeMetricFamily(
            "eidetica_tree_peers_lagging",
            "Pairs of a tree and a peer whose last known tips are not this node's.",
            value=lagging,
        )
