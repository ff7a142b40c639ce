"""The elastic context: process group, restore, the step loop, agreed stop and commits.

    ctx = elastic.init(ElasticConfig(ckpt_every=10))
    ctx.restore(model, optimizer, scheduler)
    for step in ctx.loop(total_steps, len(dataset), global_batch):
        for mb in step.micro(ddp_model):
            step.backward(loss_fn(ddp_model(x[mb.indices]), y[mb.indices]), mb)
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
    ctx.close()

After the body of each step the loop does the boundary work: all ranks agree (one small
all-reduce) whether anyone was asked to stop, rank 0 logs the step, and commits when due, when
stopping and at the last step.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from contract import control
from contract.workerenv import WorkerEnv

from .bound import BoundObjects
from .checkpoint import Checkpoint, CheckpointRef, CheckpointStore, checkpoint_name
from .env import worker_env
from .errors import CheckpointError, CommitFailedError, ElasticError, EnvironmentConfigError
from .fence import ensure_current
from .logs import get_logger
from .loop import Step
from .policy import BATCH_POLICIES, BatchPlan, BatchPolicyName, plan_batch, rescale_lr
from .sampler import GlobalSampler, plan_micro_batches
from . import lifeline, peerloss
from .snapshot import SnapshotStore
from .state import TrainState, apply_payload, build_payload
from .steplog import StepLog
from .stop import StopFlag

try:  # torch.distributed's object collectives (restoring a peer's snapshot) need numpy: fail at
    import numpy  # noqa: F401  import, not at the first restore after a node loss
except ImportError as exc:
    raise EnvironmentConfigError(
        f"trainer.elastic needs numpy on every node ({exc}): pip install 'coord[elastic]' "
        "into the environment the workers run in") from exc

log = get_logger(__name__)
UNDER_COORD = "COORD_JOB_ID"  # set in every worker coord starts


@dataclass(frozen=True)
class ElasticConfig:
    """Knobs of the elastic loop; defaults suit a small CPU job."""

    ckpt_every: int = 10
    keep: int = 2
    batch_policy: BatchPolicyName = "keep_global"
    reference_world_size: int | None = None  # linear_lr: world the global batch refers to
    max_micro_batch: int | None = None  # per-rank cap; larger shares use accumulation
    seed: int = 0  # data order; a resumed job keeps the seed it started with
    timeout_s: float = 120.0  # process group (collective) timeout
    backend: str | None = None  # None: nccl with CUDA, gloo otherwise
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    # Node-local snapshot every N steps (0: off); needs COORD_SNAPSHOT_DIR (set by the agent).
    snapshot_every: int = 1

    def __post_init__(self) -> None:
        if self.ckpt_every < 1:
            raise ValueError("ckpt_every must be >= 1")
        if self.snapshot_every < 0:
            raise ValueError("snapshot_every must be >= 0")
        if self.batch_policy not in BATCH_POLICIES:
            raise ValueError(f"batch_policy must be one of {BATCH_POLICIES}")
        if self.max_micro_batch is not None and self.max_micro_batch < 1:
            raise ValueError("max_micro_batch must be >= 1")


def init(config: ElasticConfig | None = None,
         environ: Mapping[str, str] | None = None) -> ElasticContext:
    """Read the environment, install the stop handler, refuse if fenced, join the group."""
    config = config or ElasticConfig()
    env = worker_env(environ)
    peerloss.install()
    lifeline.watch(environ=environ)
    stop = StopFlag()
    stop.install(config.stop_signals)
    try:
        ensure_current(env.checkpoint_dir, env.generation, env.job_id)
        device, backend = _select_device(config.backend, env.local_rank)
        owns_group = _init_process_group(env, backend, config.timeout_s)
    except BaseException:
        stop.uninstall()
        raise
    return ElasticContext(env, config, device, stop, owns_group)


class ElasticContext(BoundObjects):
    """Per-process handle on the elastic job; create it with `init()`."""

    def __init__(self, env: WorkerEnv, config: ElasticConfig, device: torch.device,
                 stop: StopFlag, owns_group: bool) -> None:
        self.env = env
        self.config = config
        self.device = device
        self.stop_flag = stop
        self.store = CheckpointStore(env.checkpoint_dir, env.generation, config.keep, env.job_id,
                                     report=UNDER_COORD in os.environ)
        self.snapshots = (SnapshotStore(env.snapshot_dir, env.generation, config.snapshot_every)
                          if env.snapshot_dir and config.snapshot_every else None)
        self.state = TrainState(generation=env.generation, world_size=env.world_size,
                                data_seed=config.seed)
        self.stopped = False
        self._owns_group = owns_group
        self._steplog: StepLog | None = None
        self._last_commit_step: int | None = None
        self._bound: tuple[torch.nn.Module, Any, Any] | None = None
        self._log = log.bind(rank=env.rank, generation=env.generation)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_leader(self) -> bool:
        return self.env.is_leader

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                scheduler: Any | None = None) -> TrainState:
        """Bind the objects to checkpoint and load the newest complete checkpoint into them.

        Rank 0 picks the checkpoint and broadcasts its identity so every rank loads the same
        one even if the directory changes meanwhile. Without a checkpoint, state is fresh.
        """
        self._bound = (model, optimizer, scheduler)
        found = self.store.latest() if self.is_leader else None
        step, generation = self._broadcast_ints(
            [found.ref.step, found.ref.generation] if found else [-1, -1])
        payload = self._newer_peer_snapshot(step)
        source = "peer snapshot" if payload is not None else "checkpoint"
        if payload is None and step < 0:
            self._log.info("fresh_start", world_size=self.world_size)
            self._report_restored()
            return self.state
        if payload is None:
            payload = (found or self._load_chosen(step, generation)).payload
        self.state = apply_payload(payload, model, optimizer, scheduler)
        self._last_commit_step = step if source == "checkpoint" else None
        if source == "peer snapshot" and self.is_leader:
            self._step_log().backfill(self.state.step, self.state.generation,
                                      self.state.last_loss, self.state.samples_seen)
        self._log.info("restored", source=source, step=self.state.step,
                       samples=self.state.samples_seen, from_generation=self.state.generation,
                       world_size=self.world_size)
        self._report_restored()
        return self.state

    def _report_restored(self) -> None:
        """Under coord, the leader says which step this start resumes from (0: fresh), so
        coordd can tell a resumed job from one that started over."""
        if self.is_leader and UNDER_COORD in os.environ:
            control.emit("restored", step=self.state.step)

    def _newer_peer_snapshot(self, durable_step: int) -> dict[str, Any] | None:
        """The newest snapshot any node holds, if newer than the durable checkpoint, sent by
        the lowest rank that holds it. Every rank takes part in the same collectives."""
        mine = None
        if self.snapshots is not None and self.env.local_rank == 0:
            mine = self.snapshots.latest()
        have = mine.ref.step if mine else -1
        best = self._all_reduce_int(have, dist.ReduceOp.MAX)
        if best <= durable_step:
            return None
        holder = self._all_reduce_int(self.rank if have == best else self.world_size,
                                      dist.ReduceOp.MIN)
        box = [mine.payload if self.rank == holder else None]
        dist.broadcast_object_list(box, src=holder)
        return box[0]

    def _all_reduce_int(self, value: int, op: dist.ReduceOp) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def loop(self, total_steps: int, dataset_size: int, global_batch: int,
             on_step: Callable[[TrainState], None] | None = None) -> Iterator[Step]:
        """Yield steps from the restored one to `total_steps`, or until an agreed stop.

        `on_step(state)` runs on every rank after each step's boundary work, when the global
        mean loss of the step (`state.last_loss`) is known.
        """
        if self._bound is None:
            raise RuntimeError("call ctx.restore(model, optimizer, scheduler) before ctx.loop()")
        plan = self._prepare_batch_plan(global_batch)
        sampler = GlobalSampler(dataset_size, self.state.data_seed)
        if self._agree(0.0)[0]:
            self._stop_here()
            return
        while self.state.step < total_steps:
            micro = plan_micro_batches(sampler, self.state.samples_seen, plan.global_batch,
                                       self.world_size, self.rank, self.config.max_micro_batch)
            step = Step(self.state.step + 1, micro, plan.global_batch)
            yield step
            done = self._finish_step(step, total_steps)
            if on_step is not None:
                on_step(self.state)
            if done:
                return

    def request_stop(self, reason: str = "requested") -> None:
        """Stop at the next step boundary, as SIGTERM does (e.g. on a preemption notice)."""
        self.stop_flag.set(reason)

    def commit(self) -> CheckpointRef | None:
        """Rank 0 writes a fenced checkpoint of the current state; other ranks do nothing."""
        if not self.is_leader:
            return None
        model, optimizer, scheduler = self._require_bound()
        payload = build_payload(self.state, model, optimizer, scheduler)
        try:
            ref = self.store.save(self.state.step, payload)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint: {exc}") from exc
        self._last_commit_step = self.state.step
        self._log.info("committed", step=ref.step, path=ref.path.name)
        return ref

    def commit_if_due(self) -> bool:
        """Commit when the step is a multiple of `ckpt_every` and not yet committed."""
        due = (self.state.step % self.config.ckpt_every == 0
               and self._last_commit_step != self.state.step)
        if due:
            self.commit()
        return due

    def close(self) -> None:
        """Release the step log, signal handlers and (if we made it) the process group.

        Drop DistributedDataParallel objects before calling this: a DDP module keeps the
        process group alive past `destroy_process_group`, and gloo then aborts the process
        (SIGABRT, exit 134) at interpreter exit. The collection below frees DDP modules that
        are already unreachable but still in reference cycles.
        """
        if self._steplog is not None:
            self._steplog.close()
            self._steplog = None
        if self.snapshots is not None:
            self.snapshots.wait()
        self.stop_flag.uninstall()
        self._bound = None
        if self._owns_group and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> ElasticContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- step boundary ---------------------------------------------------------------

    def _finish_step(self, step: Step, total_steps: int) -> bool:
        """Advance the position, agree on stopping, log, commit. True when the loop ends."""
        self.state.step = step.number
        self.state.samples_seen += step.global_batch
        stop, loss = self._agree(step.loss_contribution)
        self.state.last_loss = loss
        if self.is_leader:
            self._step_log().append(step.number, self.env.generation, loss,
                                    self.state.samples_seen)
        if self.snapshots is not None and self.env.local_rank == 0:
            model, optimizer, scheduler = self._require_bound()
            self.state.generation = self.env.generation
            self.snapshots.offer(step.number, build_payload(self.state, model, optimizer,
                                                            scheduler))
        if step.number >= total_steps:  # done: a stop request at the last step changes nothing
            self._commit_agreed()
            return True
        if stop:
            self._stop_here()
            return True
        self.commit_if_due()
        return False

    def _agree(self, loss_contribution: float) -> tuple[bool, float]:
        """One all-reduce (SUM) of [stop flag, loss share]: stop if any rank's flag is set.

        Summing 0/1 flags and testing > 0 is MAX; the second element turns every rank's
        weighted loss into the global mean loss for free.
        """
        values = [1.0 if self.stop_flag.is_set() else 0.0, loss_contribution]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        stop_votes, loss = tensor.tolist()
        return stop_votes > 0, loss

    def _stop_here(self) -> None:
        self._commit_agreed()
        self.stopped = True
        self._log.info("stopped", step=self.state.step, reason=self.stop_flag.reason or "peer")

    def _commit_agreed(self) -> None:
        """Rank 0 commits; every rank learns the outcome, so all exit 0 only if it worked."""
        error: ElasticError | None = None
        if self.is_leader and self.state.step > 0 and self._last_commit_step != self.state.step:
            try:
                self.commit()
            except ElasticError as exc:
                error = exc
        failed = torch.tensor([1 if error else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if failed.item():
            raise CommitFailedError(f"rank 0 failed to commit step {self.state.step}")

    # -- helpers -----------------------------------------------------------------------

    def _prepare_batch_plan(self, global_batch: int) -> BatchPlan:
        """Resolve the batch policy for this world and rescale the LR if the policy says so."""
        if self.state.reference_world_size is None:
            self.state.reference_world_size = (self.config.reference_world_size
                                               or self.world_size)
        plan = plan_batch(self.config.batch_policy, global_batch, self.world_size,
                          self.state.reference_world_size)
        _, optimizer, scheduler = self._require_bound()
        rescale_lr(optimizer, scheduler, plan.lr_scale / self.state.lr_scale)
        self.state.lr_scale = plan.lr_scale
        self.state.world_size = self.world_size
        self.state.generation = self.env.generation
        return plan

    def _load_chosen(self, step: int, generation: int) -> Checkpoint:
        path = self.store.directory / checkpoint_name(step, generation)
        return self.store.load(CheckpointRef(step, generation, path))

    def _broadcast_ints(self, values: list[int]) -> list[int]:
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return [int(v) for v in tensor.tolist()]



def _select_device(backend: str | None, local_rank: int) -> tuple[torch.device, str]:
    """nccl on the local GPU when CUDA is there, gloo on the CPU otherwise."""
    use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
    if not use_cuda:
        return torch.device("cpu"), backend or "gloo"
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank), "nccl"


def _init_process_group(env: WorkerEnv, backend: str, timeout_s: float) -> bool:
    """Join the group (env:// under coord); a standalone run gets a private loopback port."""
    if dist.is_initialized():
        return False
    if env.standalone and env.master_port is None:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    else:
        init_method = "env://"
    dist.init_process_group(backend, init_method=init_method, rank=env.rank,
                            world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
