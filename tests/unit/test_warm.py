"""The agent's warm worker: which commands may take it, and that it runs them as `python`
would (argv, working directory, environment, exit code)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from agent.warm import WarmPool, startup_differs, warm_argv
from contract.workerenv import node_env


@pytest.mark.parametrize("command, argv", [
    ("python train.py --steps 300", ["train.py", "--steps", "300"]),
    ("python3 a/b.py x=1", ["a/b.py", "x=1"]),
    ("python train.py --steps $STEPS", None),          # bash would expand it
    ("python train.py && echo done", None),
    ("torchrun train.py", None),
    ("python -m trainer.train --config a.toml", ["-m", "trainer.train", "--config", "a.toml"]),
    ("python -m", None),
    ("python -m 'bad module'", None),
    ("python 'unterminated", None),
])
def test_only_plain_python_script_commands_start_warm(command, argv):
    assert warm_argv(command) == argv


@contextlib.asynccontextmanager
async def filled_pool() -> AsyncIterator[WarmPool]:
    """A pool whose interpreter starts now, as an idle agent's does; closed afterwards."""
    pool = WarmPool(1 << 16, node_env({}))
    pool.fill()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.timeout(60)
async def test_a_warm_interpreter_runs_the_script_with_its_argv_cwd_and_env(tmp_path):
    (tmp_path / "job.py").write_text(
        "import os, sys\n"
        "print(sys.argv[1:], os.getcwd(), os.environ['ONLY'], 'torch' in sys.modules)\n"
        "sys.exit(3)\n")
    async with filled_pool() as pool:
        taken = await pool.take("python job.py --a 1", tmp_path, node_env({"ONLY": "this"}))
        assert taken is not None
        proc, _ = taken
        out = (await proc.stdout.read()).decode()
        assert await proc.wait() == 3
        assert out.strip() == f"['--a', '1'] {tmp_path} this True"
        assert await pool.take("python job.py", tmp_path, node_env({})) is None  # not refilled


@pytest.mark.timeout(60)
async def test_a_warm_interpreter_runs_a_module_and_never_holds_the_agent_token(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("COORD_TOKEN", "agent-secret")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "main.py").write_text(
        "import os, sys\n"
        "initial = open('/proc/self/environ', 'rb').read()\n"
        "print(sys.argv[1:], b'agent-secret' in initial, 'COORD_TOKEN' in os.environ)\n")
    async with filled_pool() as pool:  # after setenv: the agent's environment has the token
        taken = await pool.take("python -m pkg.main --x 2", tmp_path, node_env({}))
        assert taken is not None
        proc, _ = taken
        out = (await proc.stdout.read()).decode()
        assert await proc.wait() == 0, (await proc.stderr.read()).decode()
        assert out.strip() == "['--x', '2'] False False"


def test_a_job_that_sets_start_up_variables_starts_cold():
    warm = {"PATH": "/bin", "PYTHONUNBUFFERED": "1"}
    assert startup_differs({**warm, "PATH": "/usr/bin", "STEPS": "3"}, warm) == []
    assert startup_differs({**warm, "OMP_NUM_THREADS": "4"}, warm) == ["OMP_NUM_THREADS"]
    assert startup_differs({**warm, "TORCHFT_LIGHTHOUSE": "http://h:1"}, warm) == []
    assert startup_differs({"PATH": "/bin"}, warm) == ["PYTHONUNBUFFERED"]


@pytest.mark.timeout(60)
async def test_a_warm_worker_logs_at_the_jobs_rust_log_level(tmp_path):
    """torchft's native logger reads RUST_LOG once, when torchft is first imported; coord gives
    in-process workers RUST_LOG=warn (torchft logs every quorum at info). A warm worker must
    honour the job's value, not the one the interpreter had before its assignment."""
    (tmp_path / "job.py").write_text(
        "import time\n"
        "from torchft._torchft import LighthouseServer\n"
        "server = LighthouseServer(bind='127.0.0.1:0', min_replicas=1)\n"
        "time.sleep(0.5)  # it logs from its own thread\n"
        "server.shutdown()\n")
    async with filled_pool() as pool:
        taken = await pool.take("python job.py", tmp_path, node_env({"RUST_LOG": "warn"}))
        assert taken is not None
        proc, _ = taken
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "[INFO]" not in err.decode()  # "Lighthouse listening on ..." is at info
