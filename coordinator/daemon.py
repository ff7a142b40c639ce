"""`coordd`: the coordinator daemon's command line."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from contract import instance as contract_instance
from contract.errors import AlreadyRunning, StateDirRefused
from contract.instance import default_state_dir
from coordinator import instance, logs, statedir, stopreport
from coordinator.quorum import public_host
from coordinator.settings import CoorddSettings

NOT_RUNNING = 3  # as an LSB init script's `status` says "program is not running"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

app = typer.Typer(help="coordd: the coord coordinator daemon.", no_args_is_help=True,
                  add_completion=False)
token_app = typer.Typer(help="Mint, list and revoke tokens (works on the state directory; a "
                             "running coordd picks changes up within a second).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
StateDir = Annotated[Path | None, typer.Option(help="coordd's state directory (env "
                                               "COORDD_STATE_DIR; default "
                                               "~/.local/state/coord)")]
Config = Annotated[Path | None, typer.Option(help="the TOML file coordd serve was given "
                                             "(its state_dir) [env COORDD_CONFIG]")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coordd {importlib.metadata.version('coord')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print coordd's version")] = False
          ) -> None:
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
    dashboard_listen: Annotated[str | None, typer.Option(
        help="HOST:PORT for the web dashboard, HTTPS (default: off; see docs/dashboard.md)")]
        = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning")] = None,
    log_format: Annotated[str | None, typer.Option(
        help="the terminal: plain (where coordd is, then warnings and errors), console "
             "(every log entry, readable) or json (every entry as JSON) [env "
             "COORDD_LOG_FORMAT; default plain]")] = None,
    log_file: Annotated[Path | None, typer.Option(
        help="the structured log, JSON lines [default STATE_DIR/coordd.log]")] = None,
) -> None:
    """Start the coordinator. Precedence: flags > COORDD_* environment > --config file > defaults.

    Example: coordd serve --state-dir /var/lib/coord --listen 0.0.0.0:7070

    The address it listens on is written to STATE_DIR/coordd.addr, the first client token to
    STATE_DIR/token and the CA to STATE_DIR/tls/ca.pem; `coord` on the same machine finds
    them without any setting. Agents use STATE_DIR/agent-token. Stop it with `coordd stop`.
    """
    if config:
        os.environ["COORDD_CONFIG"] = str(config)
    flags = {"state_dir": state_dir, "listen": listen, "heartbeat_timeout_s": heartbeat_timeout,
             "metrics_listen": metrics_listen, "dashboard_listen": dashboard_listen,
             "log_level": log_level, "log_format": log_format,
             "log_file": log_file}
    try:
        settings = CoorddSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        statedir.create(settings.state_dir)
    except StateDirRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings.log_path.parent.mkdir(parents=True, exist_ok=True)
    logs.configure_daemon(settings.log_level, settings.log_path, settings.log_format)
    from coordinator.server import run
    try:
        asyncio.run(run(settings, _banner if settings.log_format != "json" else None))
    except AlreadyRunning as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _banner(coordinator) -> None:
    """What a person who started coordd by hand needs: where it is and how to reach it."""
    s = coordinator.settings
    address = coordinator.address
    here = ("`coord` on this machine finds it by itself" if s.state_dir == default_state_dir()
            else f"on this machine: export COORDD_STATE_DIR={s.state_dir}; `coord` then finds "
                 "it")
    secure = "plaintext" if s.insecure_plaintext else "TLS"
    lines = [f"coordd listening on {address} ({secure}, pid {os.getpid()})",
             f"  state dir: {s.state_dir} (owner-only)",
             f"  log file:  {s.log_path}",
             f"  coord:     {here}"]
    if (reachable := _reachable(coordinator)).rpartition(":")[0] not in LOOPBACK:
        ca = "" if s.insecure_plaintext else f" COORD_CA={s.tls_dir / 'ca.pem'}"
        lines.append(f"             elsewhere: COORD_ADDR={reachable} "
                     f"COORD_TOKEN=<{s.token_path}>{ca}")
    if coordinator.dashboard_url:
        lines.append(f"  dashboard: {coordinator.dashboard_url} (sign in with a client token)")
    lines.append("  stop it:   coordd stop (or Ctrl-C)")
    typer.echo("\n".join(lines))


def _reachable(coordinator) -> str:
    """The address a client elsewhere uses: for a wildcard listen, this machine's name."""
    host, _, port = coordinator.advertised().rpartition(":")
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        return f"{public_host(coordinator.settings)}:{port}"
    return coordinator.advertised()


@app.command()
def status(state_dir: StateDir = None, config: Config = None) -> None:
    """Whether a coordd runs on the state directory, and where.

    Exit code 0: it runs; 3: none runs (a coordd.addr left by one that crashed is reported
    as stale).
    """
    settings = _settings(state_dir, config)
    directory = settings.state_dir
    if settings.database_url.startswith("postgresql"):
        _print_leadership(settings.database_url)
    try:
        found = contract_instance.running(directory)
    except OSError as exc:
        typer.echo(f"error: cannot tell whether a coordd runs on {directory}: {exc}", err=True)
        raise typer.Exit(1) from None
    if found is None:
        typer.echo(f"no coordd runs on {directory}{_stale_note(directory)}")
        raise typer.Exit(NOT_RUNNING)
    typer.echo(f"coordd runs: pid {found.pid}, address {found.address or '(starting)'}, "
               f"state dir {directory}, up {_duration(found.uptime_s)}\n"
               f"  log file: {found.log_file}")


@app.command()
def stop(state_dir: StateDir = None, config: Config = None,
         timeout: Annotated[float, typer.Option(help="seconds to wait for it to end")] = 120.0
         ) -> None:
    """Stop the coordd running on the state directory cleanly, and wait until it has ended.

    Exit code 0: it stopped; 3: none ran; 1: still running after --timeout. Local nodes stop
    with coordd: see docs/coordd.md for what that does to running jobs.
    """
    settings = _settings(state_dir, config)
    directory = settings.state_dir
    started, asked_at = time.monotonic(), time.time()
    try:
        found = instance.stop(directory, timeout)
    except (TimeoutError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if found is None:
        typer.echo(f"no coordd runs on {directory}{_stale_note(directory)}")
        raise typer.Exit(NOT_RUNNING)
    typer.echo(f"coordd (pid {found.pid}) stopped after {time.monotonic() - started:.1f} s")
    for line in stopreport.outcomes(settings.db_path, asked_at):
        typer.echo(f"  {line}")


def _print_leadership(url: str) -> None:
    """The coordd set on the database: its leader, epoch and lease age, and its members."""
    from coordinator.leadership import read_view
    try:
        view = asyncio.run(read_view(url))
    except Exception as exc:  # noqa: BLE001 - any database error is reported, not raised
        typer.echo(f"cannot read the coordd set from the database: {exc}", err=True)
        return
    if view is None:
        typer.echo("coordd set: no leader yet")
        return
    typer.echo(f"coordd set: leader {view.holder} at {view.address}, epoch {view.epoch}, "
               f"lease renewed {view.lease_age_s:.1f} s ago "
               f"({'expired' if view.expires_in_s < 0 else 'valid'})")
    for member, address, seen in view.members:
        role = "leader" if member == view.holder else "standby"
        typer.echo(f"  {member}  {address:21}  {role:7}  seen {seen:.1f} s ago")


def _stale_note(directory: Path) -> str:
    if (directory / contract_instance.ADDR_FILE).exists():
        return (f" ({contract_instance.ADDR_FILE} there is stale: left by a coordd that did not stop "
                "cleanly; nothing uses it)")
    return ""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _settings(state_dir: Path | None, config: Path | None = None) -> CoorddSettings:
    if config:
        os.environ["COORDD_CONFIG"] = str(config)
    try:
        return CoorddSettings(**({"state_dir": state_dir} if state_dir else {}))
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _tokens(state_dir: Path | None):
    from coordinator.auth import TokenStore
    return TokenStore(_settings(state_dir).tokens_path)


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
