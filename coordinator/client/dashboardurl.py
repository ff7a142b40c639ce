"""Where the dashboard is, for `coord dashboard`: COORD_DASHBOARD_URL, else the URL the local
coordd wrote to its state directory. (No web stack imported here: the CLI stays light.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from contract.errors import NotFound
from contract.instance import DASHBOARD_URL_FILE, default_state_dir, live_address


def state_dir() -> Path:
    return Path(os.environ.get("COORDD_STATE_DIR", default_state_dir()))


def dashboard_url() -> str:
    if url := os.environ.get("COORD_DASHBOARD_URL", "").strip():
        return url
    path = state_dir() / DASHBOARD_URL_FILE
    try:
        url = path.read_text().strip()
    except OSError:
        raise NotFound(f"no dashboard: {path} does not exist. Start coordd with "
                       "--dashboard-listen 127.0.0.1:7080 (or dashboard_listen in its config), "
                       "or set COORD_DASHBOARD_URL for a coordd elsewhere") from None
    if live_address(state_dir()) is None:  # left by a coordd that crashed
        raise NotFound(f"no coordd runs on {state_dir()} ({path} is stale)")
    return url


def has_browser() -> bool:
    """A browser can open here: a desktop session, or macOS / Windows."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
