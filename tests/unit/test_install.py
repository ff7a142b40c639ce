"""The install profiles declare what the code they offer imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"contract", "trainer", "agent", "coordinator", "coord", "simulator"}
# Workers bring their own torch (a CPU or a CUDA build): never a declared dependency.
BROUGHT_BY_THE_USER = {"torch"}


def imported_modules(folder: Path) -> set[str]:
    """Top-level names of every absolute import in the folder's modules, lazy ones included."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_the_elastic_extra_declares_every_package_the_elastic_library_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"] + project["optional-dependencies"]
                                 ["elastic"])
    third_party = imported_modules(ROOT / "trainer" / "elastic") - set(
        sys.stdlib_module_names) - OURS - BROUGHT_BY_THE_USER
    distributions = packages_distributions()
    missing = {m for m in third_party
               if not requirement_names(distributions.get(m, [m])) & declared}
    assert {"numpy", "torchft"} <= third_party
    assert not missing, f"imported by trainer/elastic, not in coord[elastic]: {missing}"


def undeclared(folders: list[Path], extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"] + [
        r for extra in extras for r in project["optional-dependencies"][extra]])
    third_party = set().union(*map(imported_modules, folders)) - set(
        sys.stdlib_module_names) - OURS - BROUGHT_BY_THE_USER
    distributions = packages_distributions()
    return {m for m in third_party if not requirement_names(distributions.get(m, [m])) & declared}


def test_the_plain_install_is_the_client_and_the_agent_and_coordd_has_an_extra():
    light = [ROOT / "contract", ROOT / "agent", ROOT / "coordinator" / "client"]
    assert undeclared(light, []) == set()
    # the plain install lacks coordd's store: the daemon needs its extra, and has one
    assert "sqlalchemy" in undeclared([ROOT / "coordinator"], [])
    # botocore: aiobotocore pins the release it wraps
    assert undeclared([ROOT / "coordinator"], ["coordd", "elastic"]) == {"botocore"}



def test_coord_simulate_needs_only_its_extra():
    """`pip install 'coord[simulate]'` on a laptop: the simulator and the reconciler it runs
    load none of coordd's own dependencies (a None in sys.modules: not importable)."""
    import subprocess
    blocked = ["sqlalchemy", "aiosqlite", "asyncpg", "alembic", "asyncssh", "aiobotocore",
               "prometheus_client", "cryptography", "starlette", "uvicorn", "torch"]
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            "import simulator.cli, simulator.run, simulator.coord")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert undeclared([ROOT / "simulator"], ["simulate"]) == set()
