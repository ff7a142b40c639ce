"""bench/gpu.sh is run once, unattended, on a GPU machine lent for minutes: its code paths
(every part, the time limits, the report) must not rot while no GPU is around to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_gpu_bench_cpu_smoke_reports_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu.sh", "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)
    log = (tmp_path / "gpu.log").read_text()
    assert done.returncode == 0, log
    assert "not measured" not in log, log
    for part in ("[train] ResNet-50", "[dali] train_pipeline",
                 "[nccl] gloo in-process re-form after a SIGKILL of 1 of 2 ranks"):
        assert part in log, log
    assert log.count("bar >= ") == 3, log
    assert len((tmp_path / "gpu-results.jsonl").read_text().splitlines()) == 3
