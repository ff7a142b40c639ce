"""A plain torchrun-style DDP script, as PyTorch's ddp-tutorial-series multinode.py has it
(CPU: gloo, no .to(device)): it knows nothing of coord and keeps its own snapshot file, here
under $COORD_CHECKPOINT_DIR, the directory every node shares.

    python torchrun_ddp.py EPOCHS SNAPSHOT_NAME
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

SEEN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
        "ROLE_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
        "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS", "COORD_SNAPSHOT_DIR")


class Trainer:
    def __init__(self, model: torch.nn.Module, snapshot_path: str) -> None:
        self.global_rank = int(os.environ["RANK"])
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        self.epochs_run = 0
        self.snapshot_path = snapshot_path
        if os.path.exists(snapshot_path):
            snapshot = torch.load(snapshot_path)
            self.model.load_state_dict(snapshot["MODEL_STATE"])
            self.epochs_run = snapshot["EPOCHS_RUN"]
        print(f"[RANK{self.global_rank}] resuming at epoch {self.epochs_run}", flush=True)
        self.model = DDP(self.model)

    def _run_epoch(self) -> None:
        torch.manual_seed(self.epochs_run)
        source, target = torch.randn(32, 20), torch.randn(32, 1)
        self.optimizer.zero_grad()
        torch.nn.functional.mse_loss(self.model(source), target).backward()
        self.optimizer.step()
        time.sleep(0.05)

    def _save_snapshot(self, epoch: int) -> None:
        partial = f"{self.snapshot_path}.partial"
        torch.save({"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}, partial)
        os.replace(partial, self.snapshot_path)  # whole or not at all: a node may die here

    def train(self, max_epochs: int) -> None:
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch()
            if self.global_rank == 0:
                self._save_snapshot(epoch + 1)


def main(epochs: int, snapshot_name: str) -> None:
    dist.init_process_group(backend="gloo")
    print("ENV " + json.dumps({k: os.environ.get(k) for k in SEEN}), flush=True)
    trainer = Trainer(torch.nn.Linear(20, 1),
                      os.path.join(os.environ["COORD_CHECKPOINT_DIR"], snapshot_name))
    trainer.train(epochs)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
