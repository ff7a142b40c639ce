"""Rank 1 fails with exit code 1 after explaining why; the others wait a moment and succeed."""
import os
import sys
import time

rank = int(os.environ["RANK"])
print(f"rank {rank} starting", flush=True)
if rank == 1:
    print("loading shard 7 of the data set", flush=True)
    print("error: shard 7 is corrupt", file=sys.stderr, flush=True)
    sys.exit(1)
time.sleep(0.5)
