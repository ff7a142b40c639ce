"""Rank 0 exits 3 in every generation up to FAIL_UNTIL; later generations succeed."""
import os
import sys

generation = int(os.environ["COORD_GENERATION"])
rank = int(os.environ["RANK"])
print(f"generation {generation} rank {rank}", flush=True)
if rank == 0 and generation <= int(sys.argv[1]):
    print("simulated bug: exiting 3", flush=True)
    sys.exit(3)
