"""In-process recovery (torchft): a lost peer never restarts the survivors.

    ctx = inprocess.init(InProcessConfig(ckpt_every=20))
    ctx.restore(model, optimizer, scheduler)
    for step in ctx.loop(total_steps, len(dataset), global_batch):
        for mb in step.micro(model):
            step.backward(loss_fn(model(x[mb.indices]), y[mb.indices]), mb)
    ctx.close()

Every worker is one torchft replica. The context owns the update: after the body it all-reduces
the gradients and the loss as one flat buffer across the replicas of the current quorum, asks
torchft whether the step may be committed, and only then steps the optimizer and scheduler. If
a peer vanished during the step every survivor's all-reduce fails, the step is discarded
everywhere and redone in the quorum re-formed without the peer: the survivors keep their
processes, and no committed step is lost.

A quorum is not asked for every step. The flat buffer carries one more number, the replicas
that want a quorum before the next step: one that leaves (SIGTERM), one whose last quorum
is `quorum_interval_s` old (a joiner waits in the quorum service about that long), or one
whose last quorum let in a joiner that heals (it takes part from the next quorum). Every
replica that commits the step reads the same sum, so all agree which steps begin with a
quorum; a replica whose step was discarded always asks for one, and the group it closed fails
its peers into asking too. A lost peer needs no quorum to be noticed: the all-reduce fails.

A replica that joins a running job takes model, optimizer and position from a live peer over
torchft's HTTP checkpoint transport (not from disk). The replica with quorum rank 0 writes
durable fenced checkpoints every `ckpt_every` steps on a background thread; they are what a
job resumes from in restart mode when every replica is gone. SIGTERM (drain, spot notice)
makes this replica leave after the step in flight is committed: nothing is discarded.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from contract import control
from contract.workerenv import ReplicaEnv

from .bound import BoundObjects
from .checkpoint import CheckpointStore
from .env import replica_env
from . import lifeline
from .ftglue import (Fence, abort_group, apply_pending_heal, healed_in_this_quorum, make_manager,
                     quorum_members, shutdown_group)
from .logs import get_logger
from .peerloss import PEER_LOST, discard_reason, reform_cause
from .loop import Step
from .pause import PauseDetector
from .relay import Relay
from .sampler import GlobalSampler, plan_micro_batches
from .snapshot import SnapshotStore
from .state import TrainState, apply_payload, build_payload
from .steplog import StepLog
from .stop import StopFlag

log = get_logger(__name__)


@dataclass(frozen=True)
class InProcessConfig:
    """Knobs of the in-process loop; defaults suit a small CPU job."""

    ckpt_every: int = 20  # durable checkpoint (asynchronous) every N committed steps
    seed: int = 0  # data order
    timeout_s: float = 10.0  # a collective or heal that takes longer fails the step
    quorum_timeout_s: float = 60.0
    # A quorum pending this long closes this replica's old group, so peers stuck in a collective
    # on it fail now (ftglue). A replica that pauses longer between steps (an evaluation in
    # on_step, the leader's copy of a model of many GB for its durable checkpoint) costs
    # everyone one redone step (on a step without a quorum, once the pause passes timeout_s):
    # raise both then.
    stall_s: float = 3.0
    # Longest time between two quorums while nothing fails: about the most a joiner waits for
    # the running replicas to let it in (plus a step). Keep it under the Lighthouse's join
    # timeout (100 ms): joiners waiting longer could be given a quorum of their own. 0 asks
    # for a quorum every step (torchft's way: its round trips then slow short steps).
    quorum_interval_s: float = 0.05
    max_micro_batch: int | None = None
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    # A replica whose process did not run this long during a step (frozen) commits nothing
    # of that step: coord may have dropped it and its peers abandoned the step meanwhile.
    # None: what coord derives from its heartbeat timeout (COORD_PAUSE_S), else 2 s.
    pause_s: float | None = None

    def __post_init__(self) -> None:
        if self.ckpt_every < 1:
            raise ValueError("ckpt_every must be >= 1")
        if self.quorum_interval_s < 0:
            raise ValueError("quorum_interval_s must be >= 0")
        if self.pause_s is not None and self.pause_s <= 0:
            raise ValueError("pause_s must be > 0")


def selected(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this worker should take the in-process path: coord asked for it (mode
    "inprocess"), or left the choice to the script (mode "auto", the default) and torchft is
    installed here. A script offering both paths branches on this."""
    env = os.environ if environ is None else environ
    mode = env.get("COORD_FT_MODE", "")
    if mode == "inprocess":
        return True
    return (mode == "auto" and bool(env.get("TORCHFT_LIGHTHOUSE"))
            and importlib.util.find_spec("torchft") is not None)


def init(config: InProcessConfig | None = None,
         environ: Mapping[str, str] | None = None) -> InProcessContext:
    config = config or InProcessConfig()
    env = replica_env(environ)
    stop = StopFlag()
    stop.install(config.stop_signals)
    return InProcessContext(env, config, stop)


class InProcessContext(BoundObjects):
    """Per-process handle on an in-process (torchft) job; create it with `init()`."""

    def __init__(self, env: ReplicaEnv, config: InProcessConfig, stop: StopFlag) -> None:
        self.env, self.config, self.stop_flag = env, config, stop
        self.device = _select_device(env.local_rank)
        self.state = TrainState(generation=env.generation, data_seed=config.seed)
        self.stopped = False
        self.healed_from_peer = False
        self.discarded = 0  # steps whose update was thrown away (a peer vanished mid-step)
        self.reformations: list[tuple[int, int, float]] = []  # (step, new size, seconds)
        self._bound: tuple[torch.nn.Module, Any, Any] | None = None
        under_coord = bool(env.job_id)
        self._checkpoints = CheckpointStore(env.checkpoint_dir, env.generation, job_id=env.job_id,
                                            report=under_coord)
        self._durable = SnapshotStore(env.checkpoint_dir, env.generation, config.ckpt_every,
                                      job_id=env.job_id, report=under_coord)
        self._steplog: StepLog | None = None
        self._logged = 0  # the last step this replica wrote to the step log
        self._was_replica = False  # has committed a step (and told coord so)
        # A joiner commits nothing below the newest durable step: it must first heal from a
        # replica that holds the job's state. Otherwise joiners that meet while the last
        # survivor is busy could start a new lineage from their fresh weights.
        self._floor = 0
        self._quorum: tuple[int, int | None] | None = None  # (size, rank) of the last quorum
        # The replicas of the launch are still gathering (they start at different moments):
        # a quorum that grows, or a state taken from a peer, is the start, not a recovery.
        self._starting = not env.joining
        self._stale = False  # a step was discarded: plan the next by its own quorum
        self._lost_peer = False  # ... because a peer vanished: the re-formation says so
        self._quorum_started = 0.0
        self._quorum_next = True  # agreed in the last step's all-reduce (or none yet)
        self._leaving = False  # this replica said so in the last step's all-reduce
        self._manager = None
        self._store = None
        self._fence = Fence()  # replicas coordd dropped, told through the lifeline
        self._relay = Relay(env.lighthouse)  # to the Lighthouse, wherever coordd runs it
        self._pauses = PauseDetector(config.pause_s or env.pause_s)
        # When the step in flight began (its pauses void it): a slow start is no pause.
        self._step_began = time.monotonic()
        self._log = log.bind(replica=env.replica, generation=env.generation)
        lifeline.watch(self._on_lifeline)

    @property
    def rank(self) -> int | None:
        """This replica's rank among the replicas that train the current step (the step's
        share was planned by it); None in a step it sits out while it heals from a peer."""
        return self._planned()[1]

    @property
    def world_size(self) -> int:
        """Replicas that train the current step (0 before the first quorum)."""
        return self._planned()[0]

    @property
    def is_leader(self) -> bool:
        """The replica of rank 0 writes the step log and durable checkpoints."""
        return self.rank == 0

    def _planned(self) -> tuple[int, int | None]:
        """(size, rank) the current step was planned by; read without waiting for a quorum
        that is still forming (it would undo the overlap of quorum and compute)."""
        return self._quorum or (0, None)

    # -- setup ---------------------------------------------------------------------------

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                scheduler: Any | None = None) -> TrainState:
        """Bind the objects, load the newest durable checkpoint unless joining a running
        quorum (a joiner heals from a peer at its first step), and join the replicas."""
        self._bound = (model, optimizer, scheduler)
        if self.env.joining:
            self._floor = max((ref.step for ref in self._checkpoints.refs()), default=0)
        else:
            found = self._checkpoints.latest()
            if found is not None:
                self.state = apply_payload(found.payload, model, optimizer, scheduler)
                self._log.info("restored", source="checkpoint", step=self.state.step)
            if self.env.job_id:  # under coord: where this start resumes from (0: fresh)
                control.emit("restored", step=self.state.step)
        self.state.generation = self.env.generation
        # The first optimizer step imports torch._dynamo, which is slow. A joiner doing
        # that after it joined would hold up the quorum it is in; do it before joining.
        importlib.import_module("torch._dynamo")
        self._manager = self._make_manager()
        self._manager.load_state_dict({"step": self.state.step, "batches_committed": 0})
        return self.state

    def _make_manager(self):
        manager, self._store = make_manager(
            host=self.env.host, lighthouse=self._relay.address,
            replica_id=f"{self.env.node_id}_{self.env.replica}",
            min_replicas=self.env.min_replicas, device=self.device,
            timeout_s=self.config.timeout_s, quorum_timeout_s=self.config.quorum_timeout_s,
            stall_s=self.config.stall_s,
            load_state=self._load_state, state=self._state_dict, fence=self._fence)
        return manager

    def _on_lifeline(self, message: dict[str, Any]) -> None:
        """coordd re-formed the replicas (lifeline thread): the dropped ones no longer count;
        or its Lighthouse moved (a failover): the relay follows it."""
        if message.get("kind") == "reformed" and message.get("dropped"):
            self._fence.drop(message["dropped"])
        elif message.get("kind") == "quorum" and isinstance(message.get("address"), str):
            self._relay.point(message["address"])

    def _state_dict(self) -> dict[str, Any]:
        model, optimizer, scheduler = self._require_bound()
        return build_payload(self.state, model, optimizer, scheduler)

    def _load_state(self, payload: dict[str, Any]) -> None:
        """Called by torchft when this replica heals from a peer."""
        model, optimizer, scheduler = self._require_bound()
        self.state = apply_payload(payload, model, optimizer, scheduler)
        self.state.generation = self.env.generation
        if self._starting:  # every replica of the launch begins from one state
            self._log.info("synced", source="peer", step=self.state.step)
            return
        self.healed_from_peer = True
        self._log.info("healed", source="peer", step=self.state.step)

    # -- the loop ------------------------------------------------------------------------

    def loop(self, total_steps: int, dataset_size: int, global_batch: int,
             on_step: Callable[[TrainState], None] | None = None) -> Iterator[Step]:
        """Yield steps until `total_steps` or a stop request; redo a discarded step.

        `on_step(state)` runs after each committed step with the global mean loss.
        """
        if self._manager is None:
            raise RuntimeError("call ctx.restore(model, optimizer, scheduler) before ctx.loop()")
        sampler = GlobalSampler(dataset_size, self.state.data_seed)
        self._leaving = self.stop_flag.is_set()
        self._step_began = time.monotonic()
        while self.state.step < total_steps and not self._leaving:
            step = yield from self._run_step(sampler, global_batch, total_steps)
            if step is None:  # healed straight to the end
                break
            if self._finish_step(step) and on_step is not None:
                on_step(self.state)
        self._leave()

    def _run_step(self, sampler: GlobalSampler, global_batch: int,
                  total_steps: int) -> Iterator[Step]:
        """Yield this replica's share of the next step; returns the step to finish.

        On a quorum step the quorum forms while the step computes on the share the previous
        quorum gave this replica; in the rare step whose quorum differs, the share is computed
        again (before any collective, so the others only wait for it)."""
        due = self._quorum_next or self._stale
        if due:
            self._quorum_started = time.monotonic()
            self._manager.start_quorum()
        guess = self._quorum if self._quorum and not self._stale else self._settle()
        while self.state.step < total_steps:
            step = self._plan(sampler, guess, global_batch)
            if step.micro_batches:  # a replica healing this step sits it out
                yield step
            if not due:
                return step
            quorum = self._settle()
            if quorum == guess and step.number == self.state.step + 1:  # (not healed)
                return step
            self._zero_grads()
            guess = quorum
        return None

    def _plan(self, sampler: GlobalSampler, quorum: tuple[int, int | None],
              global_batch: int) -> Step:
        size, rank = quorum
        micro = [] if rank is None else plan_micro_batches(
            sampler, self.state.samples_seen, global_batch, size, rank,
            self.config.max_micro_batch)
        return Step(self.state.step + 1, micro, global_batch)

    def _settle(self) -> tuple[int, int | None]:
        """Wait for this step's quorum, take a peer's state if torchft fetched one (this
        replica was behind), note a re-formation; returns (size, rank) to plan by."""
        self._manager.wait_quorum()
        apply_pending_heal(self._manager)  # for this step's plan and the floor
        size = self._manager.num_participants()
        if self._quorum and size != self._quorum[0]:
            self._note_resize(self._quorum[0], size)
        self._starting = self._starting and size < self.env.launched
        self._quorum, self._stale = (size, self._manager.participating_rank()), False
        return self._quorum

    def _note_resize(self, old: int, size: int) -> None:
        if self._starting and size > old:
            self._log.info("replicas_joined", step=self.state.step, size=size,
                           of=self.env.launched, reason="start")
            return
        self._starting = False
        took = time.monotonic() - self._quorum_started
        self.reformations.append((self.state.step, size, took))
        self._log.info("reformed", step=self.state.step, old_size=old, new_size=size,
                       took_s=round(took, 3), cause=reform_cause(old, size, self._lost_peer))
        self._lost_peer = False

    def _finish_step(self, step: Step) -> bool:
        """All-reduce, agree, and apply the update only if every replica may. True if done."""
        model, optimizer, scheduler = self._require_bound()
        params = [p for p in model.parameters() if p.requires_grad]
        size = self._manager.num_participants()
        leaving = self.stop_flag.is_set()  # sampled once: what the peers learn is what we do
        due = (time.monotonic() - self._quorum_started >= self.config.quorum_interval_s
               or healed_in_this_quorum(self._manager))  # a healed joiner takes part from the next
        tail = torch.tensor([step.loss_contribution * size, float(leaving or due) * size],
                            device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in params] + [tail])
        self._fence.wait(self._manager.allreduce(flat))
        if (members := quorum_members(self._manager)) < self.env.min_replicas:
            self._manager.report_error(RuntimeError(
                f"the quorum has {members} replica(s), fewer than the job's minimum "
                f"{self.env.min_replicas}"))
        if self.state.step < self._floor:
            self._manager.report_error(RuntimeError(
                f"joined at step {self.state.step}, below the durable step {self._floor}: "
                "waiting to heal from a replica that holds the job's state"))
        if dropped := self._fence.counts_dropped():
            self._manager.report_error(RuntimeError(
                f"the quorum has replicas coord dropped ({', '.join(dropped)}): not counted"))
        if self._pauses.paused_since(self._step_began):
            self._manager.report_error(RuntimeError(
                "this process was stopped during the step: its peers may have gone on without it"))
        committed = self._manager.should_commit()
        if committed:
            _unflatten_into_grads(flat, params)
            if optimizer is not None:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss, wanted = flat[-2:].tolist()
            self._quorum_next = wanted > 0
            self._advance(step, loss)
        else:
            # Close this replica's group: a peer may be waiting on it rather than on a dead
            # one (gloo's ring: a survivor stayed blocked until a replacement made a quorum
            # without it), or may have committed this step and go on without a quorum. Its
            # next all-reduce fails now, so it asks for one too; the failed commit makes the
            # Lighthouse give that quorum a new id, and with it a new group.
            abort_group(self._manager)
            self.discarded += 1
            self._stale = True  # plan the redo by the next quorum
            cause = discard_reason(self._manager.errored())
            self._lost_peer = cause == PEER_LOST
            if not self._lost_peer:  # a peer loss is said once, by the re-formation
                self._log.warning("step_discarded", step=step.number, cause=cause)
        self._leaving = leaving
        self._zero_grads()
        self._step_began = time.monotonic()
        return committed

    def _zero_grads(self) -> None:
        model, optimizer, _ = self._require_bound()
        (optimizer or model).zero_grad(set_to_none=True)

    def _advance(self, step: Step, loss: float) -> None:
        self.state.step = step.number
        self.state.samples_seen += step.global_batch
        self.state.last_loss = loss
        self.state.world_size = self._manager.num_participants()
        if self.is_leader:
            steplog = self._step_log()
            if self._logged != step.number - 1:
                # Steps since this replica last logged were committed by others: the leader
                # then may have died, or this one healed from a peer that was not the leader.
                steplog.backfill(step.number - 1, self.env.generation, None,
                                 self.state.samples_seen - step.global_batch, step.global_batch)
            steplog.append(step.number, self.env.generation, loss, self.state.samples_seen)
            self._logged = step.number
            if step.number % self.config.ckpt_every == 0:
                self._durable.offer(step.number, self._state_dict())
        if not self._was_replica and self.env.job_id:
            # Under coord: a node loss may now re-form this job in place, and this replica's
            # start (quorum, heal) is over, so its agent may warm an interpreter beside it.
            control.emit("inprocess", replica=self.env.replica)
        self._was_replica = True

    def _leave(self) -> None:
        """After the last committed step: make it durable if we lead, then leave."""
        self.stopped = self.stop_flag.is_set()
        # Under coord: the job's training is done (said before the last save, however long it
        # takes: coordd stops replicas that do not say so soon after their peers).
        if not self.stopped and self.env.job_id:
            control.emit("finished", replica=self.env.replica, step=self.state.step)
        if self.is_leader and self.state.step > 0:
            self._durable.wait()
            self._checkpoints.save(self.state.step, self._state_dict())
        self._log.info("left", step=self.state.step, reason=self.stop_flag.reason or "done",
                       discarded=self.discarded)

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        self._durable.wait()
        if self._steplog is not None:
            self._steplog.close()
            self._steplog = None
        if self._manager is not None:
            self._manager.shutdown(wait=False)
            # torchft leaves its gloo group to interpreter teardown, where a worker thread of
            # a group that once timed out can abort the process after a clean finish (seen
            # after a quorum-service restart): free it now, while the interpreter is whole.
            shutdown_group(self._manager)
            self._manager = self._store = None
            gc.collect()
        self.stop_flag.uninstall()

    def __enter__(self) -> InProcessContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()



def _unflatten_into_grads(flat: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n



def _select_device(local_rank: int) -> torch.device:
    """This node's GPU `local_rank` (torchft uses NCCL then), else the CPU (gloo)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
