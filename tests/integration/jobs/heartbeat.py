"""Prints its generation and world size every 0.2 s until stopped: a job that just lives."""
import os
import time

while True:
    print(f"alive gen={os.environ['COORD_GENERATION']} world={os.environ['WORLD_SIZE']} "
          f"master={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", flush=True)
    time.sleep(0.2)
