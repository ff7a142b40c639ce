"""Whether a node coordd gave up on (LOST, GONE) may register again: the re-registration
policy. Every decision is logged as one `node.rejoin` event.

- A node a provider started is refused for good: its provider was told to remove the
  machine when the node was lost, and the job got a replacement; the agent is stopped
  (its workers, then itself, by a Drain).
- A node started by hand (a host with a stable node id that rebooted, or whose agent was
  cut off for a while) comes back as a fresh incarnation, READY with no job, but only once
  it runs no worker of before: fencing holds, no worker of an old generation ever rejoins
  a job. While it still runs some, they are killed (no grace: coordd stopped counting them
  long ago) and the stream is closed without a Drain, so the agent reconnects once they
  are gone and is admitted then.
"""

from __future__ import annotations

import structlog

from coord.v1 import agent_pb2
from coordinator.store import NodeRecord

log = structlog.get_logger("coordinator.rejoin")
# Every generation: what a fenced node runs is older than this.
ANY_GENERATION = 2**62


def admit(node: NodeRecord, msg: agent_pb2.Register, session, managed: bool) -> bool:
    """True: register `node` again as a fresh incarnation. False: `session` was told what
    to stop and closed. `managed`: a provider coordd runs owns the node's machine."""
    workers = [(w.job_id, w.generation, w.rank) for w in msg.running]
    if managed:
        decision = "refused"
        reason = f"its machine was handed back to the {node.provider} provider"
    elif workers:
        decision = "stop_workers_first"
        reason = "it still runs workers of a generation coordd no longer counts"
    else:
        decision, reason = "fresh", "started by hand, runs no worker of before"
    emit = log.info if decision == "fresh" else log.warning
    emit("node.rejoin", node=node.id, was=str(node.state), job=node.job_id, decision=decision,
         reason=reason, workers=workers[:16], incarnation=msg.incarnation[:64])
    if decision == "fresh":
        return True
    for job_id in {job for job, _, _ in workers}:
        session.send(agent_pb2.CoordinatorMessage(stop=agent_pb2.StopWorkers(
            job_id=job_id, generation=ANY_GENERATION, grace_s=0, reason="node was removed")))
    if managed:
        session.send(agent_pb2.CoordinatorMessage(drain=agent_pb2.Drain(
            reason="node was removed")))
    session.close()
    return False
