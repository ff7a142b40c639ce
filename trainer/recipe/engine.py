"""The training loop of the recipe on top of the elastic library.

Each phase of the table is one `ctx.loop(...)` with that phase's global batch, run until the
phase's last sample, so step numbers, checkpoints and the agreed stop all come from the
library while batch size, image size and learning rate come from the phase table as functions
of samples seen. Epoch ends (validation, metrics) are detected from samples seen as well.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer import elastic

from .config import RecipeConfig
from .data import Placement, TrainStream, val_batches
from .folder import FolderIndex, val_shard
from .logs import get_logger
from .metrics import RunMetrics, topk_correct
from .models import build_model
from .optim import build_loss, build_optimizer
from .phases import PhasePlan, PhaseSpan
from .schedule import LRSchedule

log = get_logger(__name__)


class DataOrderError(elastic.ElasticError):
    """The data pipeline delivered other samples than the elastic loop planned."""


@dataclass(frozen=True)
class Paths:
    out_dir: Path
    trace_dir: Path | None = None  # per-step sample ids, for tests and audits


class Trainer:
    """Model, optimizer, data and metrics of one worker; `fit()` runs what is left."""

    def __init__(self, ctx: elastic.ElasticContext, cfg: RecipeConfig, paths: Paths,
                 train_index: FolderIndex, val_index: FolderIndex) -> None:
        self.ctx, self.cfg, self.paths = ctx, cfg, paths
        self.gpu = ctx.device.type == "cuda"
        if self.gpu:  # one autotuning per image size; progressive resizing has a few
            torch.backends.cudnn.benchmark = True
        self.train_index, self.val_index = train_index, val_index
        self.labels = torch.from_numpy(self.train_index.labels)
        self.plan = PhasePlan(cfg.phases, len(self.train_index))
        self.schedule = LRSchedule(cfg.optimizer, cfg.schedule, self.plan)
        self.model = build_model(cfg.model).to(ctx.device, memory_format=self._layout)
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.loss_fn = build_loss(cfg.optimizer)
        ctx.restore(self.model, self.optimizer, None)
        self.metrics = RunMetrics(ctx.state, len(self.train_index), paths.out_dir,
                                  ctx.is_leader, cfg.target)
        self.metrics.restored(ctx.env.generation, ctx.world_size)
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[ctx.device.index] if self.gpu else None)
        self.log = log.bind(rank=ctx.rank, generation=ctx.env.generation)
        self._lr = self.schedule.lr(ctx.state.samples_seen)
        self._tick = time.perf_counter()

    @property
    def _layout(self) -> torch.memory_format:
        return torch.channels_last if self.gpu else torch.contiguous_format

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 on GPU; fp32 on CPU (CPU bf16 is slower than fp32 on most hosts)."""
        if self.gpu:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _placement(self) -> Placement:
        device_id = self.ctx.device.index if self.gpu else None
        return Placement(device_id, self.cfg.data.threads, self.cfg.run.seed)

    # -- the run -------------------------------------------------------------------------

    def fit(self) -> dict | None:
        """Train to the end of the phase table; the summary, or None after an agreed stop."""
        try:
            self._catch_up()
            for span in self.plan.remaining(self.ctx.state.samples_seen):
                self._run_phase(span)
                if self.ctx.stopped:
                    return None
            return self._finish()
        finally:
            self.metrics.close()

    def _catch_up(self) -> None:
        """Epoch-end work that an agreed stop at an epoch's last step left undone."""
        if self.metrics.epochs_due() > 0:
            self._end_epoch(self.plan.at(max(0, self.ctx.state.samples_seen - 1)))

    def _run_phase(self, span: PhaseSpan) -> None:
        state, phase = self.ctx.state, span.phase
        steps = span.steps_left(state.samples_seen)
        if self.ctx.is_leader:
            self.log.info("phase_start", phase=span.index, epochs=list(phase.epochs),
                          size=phase.size, global_batch=phase.global_batch,
                          lr_scale=phase.lr_scale, rect_val=phase.rect_val,
                          resumed_at_epoch=round(self.plan.epoch(state.samples_seen), 3),
                          steps=steps, world_size=self.ctx.world_size)
        stream = TrainStream(self.train_index, span, self.cfg.data,
                             elastic.GlobalSampler(len(self.train_index), state.data_seed),
                             self.ctx.world_size, self.ctx.rank, state.samples_seen,
                             self._placement())
        self._tick = time.perf_counter()
        try:
            for step in self.ctx.loop(state.step + steps, len(self.train_index),
                                      phase.global_batch,
                                      on_step=lambda _s: self._after_step(span)):
                self._train_step(step, stream)
        finally:
            stream.close()

    def _train_step(self, step: elastic.Step, stream: TrainStream) -> None:
        images, ids = stream.next()
        if not torch.equal(ids, step.indices):
            raise DataOrderError(f"step {step.number}: the pipeline read other samples than "
                                 f"planned (rank {self.ctx.rank})")
        self._lr = self.schedule.apply(self.optimizer, self.ctx.state.samples_seen)
        images = images.to(self.ctx.device, non_blocking=True)
        images = images.contiguous(memory_format=self._layout)
        labels = self.labels[ids].to(self.ctx.device, non_blocking=True)
        offset = 0
        for mb in step.micro(self.ddp):
            part = slice(offset, offset + len(mb))
            offset += len(mb)
            with self._autocast():
                loss = self.loss_fn(self.ddp(images[part]), labels[part])
            step.backward(loss, mb)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._trace(step, ids)

    def _after_step(self, span: PhaseSpan) -> None:
        """Runs on every rank after the library's step boundary (loss is global by now)."""
        now = time.perf_counter()
        state = self.ctx.state
        self.metrics.record_step(state.last_loss, span.phase.global_batch, now - self._tick)
        if self.ctx.is_leader and state.step % self.cfg.run.log_every == 0:
            self._log_progress(now - self._tick)
        if not self.ctx.stopped and self.metrics.epochs_due() > 0:
            self._end_epoch(span)
        self._tick = time.perf_counter()

    def _log_progress(self, seconds: float) -> None:
        state = self.ctx.state
        loss = state.last_loss if state.last_loss is not None else float("nan")
        self.metrics.log_step(loss, self._lr)
        self.log.info("step", step=state.step, epoch=round(self.plan.epoch(state.samples_seen), 3),
                      loss=round(loss, 4), lr=round(self._lr, 5),
                      images_per_s=round(self.plan.at(state.samples_seen - 1).phase.global_batch
                                         / max(seconds, 1e-9), 1))

    # -- epochs and the end --------------------------------------------------------------

    def _end_epoch(self, span: PhaseSpan) -> None:
        top1, top5 = self.evaluate(span)
        row = self.metrics.close_epoch(top1, top5, self._lr)
        if self.ctx.is_leader:
            self.log.info("epoch", **{k: _brief(v) for k, v in row.items()})

    def evaluate(self, span: PhaseSpan) -> tuple[float, float]:
        """Top-1 and top-5 over the whole validation set, each rank scoring its own shard."""
        self._average_bn_statistics()
        self.model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        shard = val_shard(len(self.val_index), self.ctx.world_size, self.ctx.rank)
        with torch.no_grad(), self._autocast():
            for images, labels in val_batches(self.val_index, shard, span.phase,
                                              self.cfg.data, self._placement()):
                images = images.to(self.ctx.device).contiguous(memory_format=self._layout)
                counts += topk_correct(self.model(images), labels)
        self.model.train()
        counts = counts.to(self.ctx.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        top1, top5, total = counts.tolist()
        return top1 / total, top5 / total

    def _average_bn_statistics(self) -> None:
        """Average BN running statistics over ranks, so validation does not depend on which
        rank saw which batches (nor on the world size)."""
        world = self.ctx.world_size
        for name, buffer in self.model.named_buffers():
            if world > 1 and buffer.is_floating_point() and "running_" in name:
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world)

    def _finish(self) -> dict:
        """Final validation (unless the last epoch end already did it) and the summary."""
        if not self.metrics.validated_here():
            self._end_epoch(self.plan.spans[-1])
        summary = self.metrics.summary(self.cfg.model_dump(mode="json"))
        if self.ctx.is_leader:
            path = self.metrics.write_summary(summary)
            keys = ("wall_time_s", "epochs", "final_top1", "final_top5", "time_to_target_s")
            self.log.info("finished", summary=str(path), **{k: _brief(summary[k]) for k in keys})
        return summary

    def _trace(self, step: elastic.Step, ids: torch.Tensor) -> None:
        if self.paths.trace_dir is None:
            return
        self.paths.trace_dir.mkdir(parents=True, exist_ok=True)
        name = f"trace-g{self.ctx.env.generation}-r{self.ctx.rank}.jsonl"
        line = {"step": step.number, "generation": self.ctx.env.generation,
                "rank": self.ctx.rank, "world_size": self.ctx.world_size,
                "samples": self.ctx.state.samples_seen, "lr": self._lr, "ids": ids.tolist()}
        with open(self.paths.trace_dir / name, "a") as f:
            f.write(json.dumps(line) + "\n")


def _brief(value: object) -> object:
    """Floats to 4 significant digits for log lines (the summary keeps full precision)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value
