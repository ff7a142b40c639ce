"""Runs until stopped, with a child process of its own (cancel must reach it too)."""
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"started child {child.pid}", flush=True)
while True:
    time.sleep(1)
