"""`coordd`: the coordinator daemon's command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from coordinator import logs
from coordinator.settings import CoorddSettings

app = typer.Typer(help="coordd: the coord coordinator daemon.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _root() -> None:
    """coordd: runs jobs on nodes and re-forms them when machines vanish."""


@app.command()
def serve(
    state_dir: Annotated[Path | None, typer.Option(help="database, token, bundles, node dirs "
                                                   "[env COORDD_STATE_DIR; default "
                                                   "~/.local/state/coord]")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT for gRPC; port 0 picks a free "
                                               "one [env COORDD_LISTEN; default "
                                               "127.0.0.1:7070]")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with any setting below "
                                                "[env COORDD_CONFIG]")] = None,
    heartbeat_timeout: Annotated[float | None, typer.Option(help="seconds without a heartbeat "
                                                            "before a node is lost")] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="HOST:PORT to serve Prometheus "
                                                       "/metrics on (default: off)")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning")] = None,
) -> None:
    """Start the coordinator. Precedence: flags > COORDD_* environment > --config file > defaults.

    Example: coordd serve --state-dir /var/lib/coord --listen 0.0.0.0:7070

    The address it listens on is written to STATE_DIR/coordd.addr and the client token to
    STATE_DIR/token; `coord` on the same machine finds both without any setting.
    """
    import os
    if config:
        os.environ["COORDD_CONFIG"] = str(config)
    flags = {"state_dir": state_dir, "listen": listen, "heartbeat_timeout_s": heartbeat_timeout,
             "metrics_listen": metrics_listen, "log_level": log_level}
    settings = CoorddSettings(**{k: v for k, v in flags.items() if v is not None})
    logs.configure(settings.log_level, settings.log_json)
    from coordinator.server import run
    asyncio.run(run(settings))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
