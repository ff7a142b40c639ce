"""Prints N numbered lines to stdout and stderr, fast, so a test can check their order."""
import os
import sys

rank = os.environ["RANK"]
n = int(sys.argv[1])
for i in range(n):
    print(f"rank={rank} line={i}")
    if i % 50 == 0:
        print(f"rank={rank} err={i}", file=sys.stderr)
