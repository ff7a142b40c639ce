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
token_app = typer.Typer(help="Mint, list and revoke tokens (works on the state directory; a "
                             "running coordd picks changes up within a second).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
StateDir = Annotated[Path | None, typer.Option(help="coordd's state directory (env "
                                               "COORDD_STATE_DIR; default "
                                               "~/.local/state/coord)")]


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

    The address it listens on is written to STATE_DIR/coordd.addr, the first client token to
    STATE_DIR/token and the CA to STATE_DIR/tls/ca.pem; `coord` on the same machine finds
    them without any setting. Agents use STATE_DIR/agent-token.
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


def _tokens(state_dir: Path | None):
    from coordinator.auth import TokenStore
    settings = CoorddSettings(**({"state_dir": state_dir} if state_dir else {}))
    return TokenStore(settings.tokens_path)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="client (JobService: submit, cancel, ...) or agent "
                                      "(AgentService: join as a node)")],
    note: Annotated[str, typer.Option(help="what the token is for")] = "",
    state_dir: StateDir = None,
) -> None:
    """Print a new token once (only its hash is kept).

    Example: coordd token create --role agent --note "ssh pool"
    """
    if role not in ("client", "agent"):
        typer.echo(f"error: --role must be client or agent, not {role!r}", err=True)
        raise typer.Exit(2)
    typer.echo(_tokens(state_dir).create(role, note))  # type: ignore[arg-type]


@token_app.command("list")
def token_list(state_dir: StateDir = None) -> None:
    """Ids, roles and notes of the tokens coordd accepts (never the tokens)."""
    for entry in _tokens(state_dir).load().values():
        typer.echo(f"{entry.id}  {entry.role:6}  {entry.note}")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="the id: the part before '.'")],
                 state_dir: StateDir = None) -> None:
    """Stop accepting a token (new calls; an agent's open stream keeps going until it drops)."""
    if not _tokens(state_dir).revoke(token_id):
        typer.echo(f"error: no token with id {token_id!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {token_id}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
