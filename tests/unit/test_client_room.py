"""The client (`coord`, the SDK) runs on a laptop with `pip install coord`: it loads none of
coordd's modules and no torch, and `coordd` without its extra says what to install."""

from __future__ import annotations

import json
import subprocess
import sys

DAEMON = ("coordinator.store", "coordinator.server", "coordinator.jobs", "coordinator.nodes",
          "coordinator.reconciler", "coordinator.providers", "coordinator.settings",
          "coordinator.instance", "sqlalchemy", "aiosqlite", "prometheus_client", "cryptography",
          "aiobotocore", "asyncssh", "torch")


def test_the_cli_and_the_sdk_load_no_daemon_module_and_no_torch():
    code = ("import json, sys; import coordinator.client.cli, coordinator.client.sdk; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True).stdout)
    assert [m for m in loaded if m.startswith(DAEMON)] == []


def test_coordd_without_its_dependencies_says_what_to_install_in_one_line():
    # A None in sys.modules is how Python marks a module as not importable.
    code = ("import sys; sys.modules['sqlalchemy'] = sys.modules['asyncssh'] = None; "
            "from coordinator.launch import main; sys.argv = ['coordd', 'start']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "coordd: its dependencies are not installed (missing: sqlalchemy, asyncssh); install "
        "them with: pip install 'coord[coordd]'"]
