"""Elastic training for coord workers: restore, agreed stop, fenced atomic commits.

A training script uses it in a few lines::

    from trainer import elastic

    ctx = elastic.init(elastic.ElasticConfig(ckpt_every=10))
    ctx.restore(model, optimizer, scheduler)
    for step in ctx.loop(total_steps, dataset_size, global_batch):
        for mb in step.micro(ddp_model):
            step.backward(loss_fn(ddp_model(x[mb.indices]), y[mb.indices]), mb)
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
    ctx.close()
"""

from contract.exits import PEER_LOST_EXIT
from contract.workerenv import WorkerEnv

from .checkpoint import Checkpoint, CheckpointRef, CheckpointStore
from .context import ElasticConfig, ElasticContext, init
from .errors import (
    CheckpointError,
    CommitFailedError,
    ElasticError,
    EnvironmentConfigError,
    FenceFileError,
    StaleGenerationError,
)
from .fence import ensure_current
from .loop import Step
from .policy import BatchPlan, plan_batch
from .sampler import GlobalSampler, MicroBatch, plan_micro_batches
from .state import TrainState
from .steplog import History, StepRecord, committed_history

__all__ = [
    "BatchPlan", "Checkpoint", "CheckpointError", "CheckpointRef", "CheckpointStore",
    "CommitFailedError", "ElasticConfig", "ElasticContext", "ElasticError",
    "EnvironmentConfigError", "FenceFileError", "GlobalSampler", "History", "MicroBatch", "PEER_LOST_EXIT",
    "StaleGenerationError", "Step", "StepRecord", "TrainState", "WorkerEnv",
    "committed_history", "ensure_current", "init", "plan_batch", "plan_micro_batches",
]
