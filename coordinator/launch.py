"""The `coordd` console script: coordd's own dependencies are an extra (`coord[coordd]`), so
a plain `pip install coord` (the client and the agent) has no daemon to run; say so in one
line rather than with an ImportError's traceback."""

from __future__ import annotations

import importlib.util
import sys

# Import name -> the distribution that brings it (pyproject.toml's `coordd` extra).
DAEMON_MODULES = {"sqlalchemy": "sqlalchemy", "aiosqlite": "aiosqlite",
                  "prometheus_client": "prometheus-client", "cryptography": "cryptography",
                  "aiobotocore": "aiobotocore", "asyncssh": "asyncssh"}
EXIT_NOT_INSTALLED = 2


def missing() -> list[str]:
    return [dist for module, dist in DAEMON_MODULES.items()
            if importlib.util.find_spec(module) is None]


def main() -> None:
    if absent := missing():
        print(f"coordd: its dependencies are not installed (missing: {', '.join(absent)}); "
              "install them with: pip install 'coord[coordd]'", file=sys.stderr)
        sys.exit(EXIT_NOT_INSTALLED)
    from coordinator.daemon import main as daemon_main
    daemon_main()
