"""One replica of examples/elastic/train.py's job on raw torchft 0.2.0, as a torchft user runs it.

    torchft_lighthouse --bind 127.0.0.1:29510 --min_replicas 2 --join_timeout_ms 100 &
    python bench/torchft_job.py --lighthouse http://127.0.0.1:29510 --replica 0 --log-dir D &
    python bench/torchft_job.py --lighthouse http://127.0.0.1:29510 --replica 1 --log-dir D &
    python bench/torchft_job.py --lighthouse http://127.0.0.1:29510 --replica 2 --log-dir D

Each process is a replica group of one: it hosts its group's TCPStore, runs a
`torchft.Manager` with `ProcessGroupGloo`, and trains the same `Net` on the same data,
global batch, learning-rate schedule and step sleep as the coord rows of bench/recovery.py. A
replica that restarts heals model, optimizer and step from a live peer (torchft's HTTP
transport).

Gradients are all-reduced by hand (one flat buffer through `manager.allreduce`) and applied
only if `should_commit()`: torchft 0.2.0's `torchft.ddp.DistributedDataParallel` crashes the
survivors when a peer is SIGKILLed (AssertionError in its `_comm_hook`), its manual path
recovers. The replica of participating rank 0 appends each committed step to
`<log-dir>/steps.jsonl` (trainer.elastic.steplog's format, one generation, plus the number of
participants) with one O_APPEND write per line, so the bench reads it like coord's step log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed import TCPStore
from torchft import Manager, ProcessGroupGloo
from torchft.optim import OptimizerWrapper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "elastic"))
from train import Net, make_dataset, make_schedule  # noqa: E402  (the coord rows' job)

from trainer.elastic.steplog import STEPLOG_FILE  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lighthouse", required=True, help="http://HOST:PORT of the Lighthouse")
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--log-dir", type=Path, required=True)
    p.add_argument("--min-replicas", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--step-sleep", type=float, default=0.04)
    p.add_argument("--dataset-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    # coord's in-process replicas use the same collective timeout (InProcessConfig.timeout_s).
    p.add_argument("--timeout", type=float, default=10.0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images, labels = make_dataset(args.dataset_size, args.seed)
    model = Net()
    inner = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = make_schedule(inner, args)

    def state_dict() -> dict:
        return {"model": model.state_dict(), "optim": inner.state_dict(),
                "schedule": scheduler.state_dict()}

    def load_state_dict(state: dict) -> None:
        model.load_state_dict(state["model"])
        inner.load_state_dict(state["optim"])
        scheduler.load_state_dict(state["schedule"])

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    timeout = timedelta(seconds=args.timeout)
    manager = Manager(pg=ProcessGroupGloo(timeout=timeout), load_state_dict=load_state_dict,
                      state_dict=state_dict, min_replica_size=args.min_replicas,
                      timeout=timeout, rank=0, world_size=1, store_addr="127.0.0.1",
                      store_port=store.port, lighthouse_addr=args.lighthouse,
                      replica_id=f"replica_{args.replica}", hostname="127.0.0.1")
    optimizer = OptimizerWrapper(manager, inner)  # zero_grad: quorum; step: commit or drop
    log = StepWriter(args.log_dir / STEPLOG_FILE)
    params = list(model.parameters())
    while manager.current_step() < args.steps:
        optimizer.zero_grad()
        # rank None: healing, not in this step's quorum (torchft zeroes its contribution)
        n, rank = manager.num_participants(), manager.participating_rank()
        order = torch.randperm(args.dataset_size,
                               generator=torch.Generator().manual_seed(manager.current_step()))
        idx = order[:args.global_batch][(rank or 0)::n]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        manager.allreduce(flat).wait()  # averaged over the participants
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        before = manager.current_step()
        optimizer.step()
        if manager.current_step() > before:
            scheduler.step()
            if rank == 0:
                log.append(manager.current_step(), float(loss), args.global_batch, n)
    manager.shutdown(wait=False)


class StepWriter:
    """steps.jsonl lines that `trainer.elastic.committed_history` reads (torchft has no
    generations: one lineage), plus the quorum size; one os.write per line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, step: int, loss: float, global_batch: int, participants: int) -> None:
        line = json.dumps({"step": step, "generation": 1, "loss": loss,
                           "samples": step * global_batch, "t": time.time(),
                           "participants": participants})
        os.write(self._fd, (line + "\n").encode())


if __name__ == "__main__":
    main()
