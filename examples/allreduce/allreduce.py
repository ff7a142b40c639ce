"""Every rank all-reduces a tensor that depends on its rank and checks the sum.

With world size W, rank r contributes (r + 1) * [1, 2, 3, 4]; the sum is W(W+1)/2 * [1, 2, 3, 4].
"""

import os

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from coord
    rank, world = dist.get_rank(), dist.get_world_size()
    tensor = torch.arange(1, 5, dtype=torch.float64) * (rank + 1)
    dist.all_reduce(tensor)
    expected = torch.arange(1, 5, dtype=torch.float64) * world * (world + 1) / 2
    assert torch.equal(tensor, expected), f"rank {rank}: got {tensor.tolist()}"
    print(f"rank {rank}/{world} on {os.environ['COORD_NODE_ID']}: "
          f"sum={tensor.tolist()} ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
