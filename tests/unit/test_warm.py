"""The agent's warm worker: which commands may take it, and that it runs them as `python`
would (argv, working directory, environment, exit code)."""

from __future__ import annotations

import pytest

from agent.warm import WarmPool, warm_argv


@pytest.mark.parametrize("command, argv", [
    ("python train.py --steps 300", ["train.py", "--steps", "300"]),
    ("python3 a/b.py x=1", ["a/b.py", "x=1"]),
    ("python train.py --steps $STEPS", None),          # bash would expand it
    ("python train.py && echo done", None),
    ("torchrun train.py", None),
    ("python -m trainer.train", None),
    ("python 'unterminated", None),
])
def test_only_plain_python_script_commands_start_warm(command, argv):
    assert warm_argv(command) == argv


@pytest.mark.timeout(60)
async def test_a_warm_interpreter_runs_the_script_with_its_argv_cwd_and_env(tmp_path):
    (tmp_path / "job.py").write_text(
        "import os, sys\n"
        "print(sys.argv[1:], os.getcwd(), os.environ['ONLY'], 'torch' in sys.modules)\n"
        "sys.exit(3)\n")
    pool = WarmPool(1 << 16)
    pool.fill()
    proc = await pool.take("python job.py --a 1", tmp_path, {"ONLY": "this"})
    assert proc is not None
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 3
    assert out.strip() == f"['--a', '1'] {tmp_path} this True"
    assert await pool.take("python job.py", tmp_path, {}) is None  # taken: not refilled yet
    await pool.close()
