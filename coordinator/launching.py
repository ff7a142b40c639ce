"""Turning a generation into StartWorkers messages: each worker's environment, and the choice
between a restart-mode and an in-process start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from contract import events as ev
from contract.spec import JobSpec
from contract.states import NodeState
from contract.workerenv import rank_env, replica_env
from coord.v1 import agent_pb2
from coordinator.nodes import NodeRegistry
from coordinator.quorum import lighthouse_available
from coordinator.reconciler.view import JobView
from coordinator.store import JobRecord

INSTALL_HINT = "pip install 'coord[elastic]'"

JobEvent = Callable[[str, str, str, ev.Payload], Awaitable[None]]  # job, kind, message, data
QuorumAddress = Callable[[JobRecord, JobSpec], Awaitable[str]]


class Launcher:
    def __init__(self, nodes: NodeRegistry, quorum_address: QuorumAddress, event: JobEvent,
                 checkpoint_dir: Callable[[JobRecord, JobSpec], str], pause_s: float):
        self.nodes, self.quorum_address, self.event = nodes, quorum_address, event
        self.checkpoint_dir, self.pause_s = checkpoint_dir, pause_s
        self._auto_said: set[tuple[str, int]] = set()  # (job, worker generation) told

    def _has_torchft(self, node_id: str) -> bool:
        return "torchft" in self.nodes.nodes[node_id].resources.get("software", ())

    def _auto_restart_reason(self, spec: JobSpec, node_ids: list[str]) -> str:
        """Why a job in mode "auto" runs a new generation in restart mode ('' if it need not)."""
        if spec.fault_tolerance.mode != "auto":
            return ""
        if not lighthouse_available():
            return f"torchft is not installed where coordd runs ({INSTALL_HINT} there)"
        if missing := [n for n in node_ids if not self._has_torchft(n)]:
            return (f"torchft is not installed on node(s) {', '.join(missing)} "
                    f"({INSTALL_HINT} on every node)")
        return ""

    async def _mode(self, record: JobRecord, spec: JobSpec, view: JobView, generation: int,
                    joining: bool) -> str:
        mode = fault_mode(spec)
        # Without torchft a worker could not join a quorum: no choice to offer, and say so.
        if joining or not (why := self._auto_restart_reason(spec, view.members)):
            return mode
        if (record.id, generation) not in self._auto_said:
            self._auto_said.add((record.id, generation))
            # `coord status` shows it
            await self.event(record.id, ev.AUTO_RESTART, "fault_tolerance.mode = 'auto' runs "
                             f"generation {generation} in restart mode: {why}; a node loss "
                             "restarts every worker", ev.AutoRestarted(reason=why))
        return "restart"

    async def launch(self, record: JobRecord, spec: JobSpec, view: JobView, generation: int,
                     node_id: str, master: tuple[str, int]) -> None:
        """Start the workers of worker generation `generation` on `node_id`: a member of a
        new generation, or (in-process) a node joining the running replicas."""
        joining = view.epoch != generation  # re-formed in place since the workers started
        mode = await self._mode(record, spec, view, generation, joining)
        lighthouse = await self.quorum_address(record, spec) if mode != "restart" else ""
        # Joiners of running replicas, and every worker in mode "inprocess", are replicas
        # only; in auto mode a new generation's workers get both environments and choose.
        replica_only = mode == "inprocess" or joining
        node = self.nodes.nodes[node_id]
        await self.nodes.set_state(node, NodeState.ASSIGNED, f"generation {record.generation}")
        base = {**spec.env, "COORD_JOB_ID": record.id, "COORD_JOB_NAME": record.name,
                "COORD_GENERATION": str(generation),
                "COORD_CHECKPOINT_DIR": self.checkpoint_dir(record, spec),
                "COORD_NODE_ID": node_id, "COORD_NODE_HOST": node.host}
        workers = []
        for rank in view.ranks_of(node_id):
            env = {**base, **rank_env(rank=rank, world_size=view.world_size,
                                      nproc_per_node=spec.nproc_per_node, master=master,
                                      restarts=record.restarts, max_restarts=spec.max_restarts,
                                      job_id=record.id)}
            if lighthouse:
                env |= replica_env(host=node.host, rank=rank, lighthouse=lighthouse,
                                   min_replicas=spec.min_world_size, joining=joining,
                                   replica_only=replica_only, replicas=view.world_size,
                                   pause_s=self.pause_s,
                                   rust_log=spec.env.get("RUST_LOG", "warn"))
            workers.append(agent_pb2.WorkerSpec(rank=rank, local_rank=int(env["LOCAL_RANK"]),
                                                env=env))
        self.nodes.send(node_id, agent_pb2.CoordinatorMessage(start=agent_pb2.StartWorkers(
            job_id=record.id, generation=generation, command=spec.run,
            setup=spec.setup or "", bundle_digest=record.bundle_digest, workers=workers,
            keep_warm=bool(lighthouse) and record.restarts < spec.max_restarts)))


def fault_mode(spec: JobSpec) -> str:
    """The job's [fault_tolerance] mode; auto is restart where coordd has no torchft."""
    mode = spec.fault_tolerance.mode
    return "restart" if mode == "auto" and not lighthouse_available() else mode
