"""A job's Policy, derived once from coordd's settings and the job's spec."""

from __future__ import annotations

from typing import Any

from contract.spec import JobSpec
from coordinator.reconciler.view import Policy
from coordinator.settings import CoorddSettings

# A worker failure settles this long beyond the reconnect grace (a lost node's stream drops
# a moment after its peers' collectives fail), a peer-loss exit beyond the heartbeat timeout.
FAILURE_SETTLE_MARGIN_S = 0.5
PEER_FAILURE_SETTLE_MARGIN_S = 2.0


def policy_for(spec: JobSpec, settings: CoorddSettings, mode: str) -> Policy:
    nodes = spec.nodes
    return timings(settings, target=nodes.count, minimum=nodes.minimum, spares=nodes.spares,
                   max_restarts=spec.max_restarts, wait_for_min_s=nodes.wait_for_min_s,
                   nproc_per_node=spec.nproc_per_node, mode=mode)


def timings(settings: CoorddSettings | None = None, **job: Any) -> Policy:
    """A Policy with coordd's timings (its defaults when `settings` is None) and the job's
    fields in `job` (a test or a simulator may override any timing there too)."""
    s = settings or CoorddSettings.model_construct()
    return Policy(**(dict(
        stop_grace_s=s.stop_grace_s,
        failure_settle_s=s.reconnect_grace_s + FAILURE_SETTLE_MARGIN_S,
        peer_failure_settle_s=s.heartbeat_timeout_s + PEER_FAILURE_SETTLE_MARGIN_S,
        finish_grace_s=s.finish_grace_s, scale_up_settle_s=s.scale_up_settle_s,
        scale_up_min_runtime_s=s.scale_up_min_runtime_s,
        initial_full_wait_s=s.initial_full_wait_s) | job))
