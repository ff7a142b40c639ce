"""Prometheus metrics for coordd, on a registry of its own (several servers per test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from contract.states import JobState, NodeState
from coordinator.loadmetrics import LoadMetrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("coord_jobs", "Jobs by state", ["state"], registry=self.registry)
        self.nodes = Gauge("coord_nodes", "Nodes by state", ["state"], registry=self.registry)
        self.reconfigurations = Counter("coord_reconfigurations_total",
                                        "Group re-formations by cause", ["cause"],
                                        registry=self.registry)
        self.recovery = Histogram("coord_recovery_seconds",
                                  "From the start of a reconfiguration to the next generation",
                                  buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
                                  registry=self.registry)
        self.rpc_latency = Histogram("coord_rpc_seconds", "RPC latency", ["method"],
                                     registry=self.registry)
        self.turns = Counter("coord_reconciler_turns_total",
                             "Decisions of the jobs' reconcilers", registry=self.registry)
        self.load = LoadMetrics(self.registry)

    def job_transition(self, old: JobState, new: JobState) -> None:
        self.jobs.labels(str(old)).dec()
        self.jobs.labels(str(new)).inc()

    def job_added(self, state: JobState) -> None:
        self.jobs.labels(str(state)).inc()

    def node_transition(self, old: NodeState | None, new: NodeState) -> None:
        if old is not None:
            self.nodes.labels(str(old)).dec()
        self.nodes.labels(str(new)).inc()

    def node_removed(self, state: NodeState) -> None:
        self.nodes.labels(str(state)).dec()

    def watch_leadership(self, leadership) -> None:
        """Gauges of the coordd set on PostgreSQL, read from `leadership` at each scrape."""
        for name, what, read in (
                ("coord_leader", "1 while this coordd leads its set", lambda: leadership.acting()),
                ("coord_leader_epoch", "the leader's epoch", lambda: leadership.seen.epoch),
                ("coord_lease_age_seconds", "since the leader last renewed its lease",
                 leadership.lease_age),
                ("coord_members", "coordd processes of the set seen lately",
                 lambda: leadership.seen.members)):
            Gauge(name, what, registry=self.registry).set_function(read)

    def serve(self, listen: str) -> None:
        """/metrics over HTTP on a thread of prometheus_client's own."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)

    def reconfigured(self, cause: str, seconds: float) -> None:
        self.reconfigurations.labels(cause or "unknown").inc()
        self.recovery.observe(seconds)

    def reconciler_turn(self) -> None:
        self.turns.inc()

    def reformed(self, cause: str) -> None:
        """An in-place re-formation (no restart: no recovery time to observe)."""
        self.reconfigurations.labels(cause or "unknown").inc()
