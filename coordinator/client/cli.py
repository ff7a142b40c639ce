"""`coord`: the command line for users. It holds no gRPC code: everything goes through the SDK.

Exit codes: a followed job's end (EXIT_FOR_STATE), coord's errors (errors.EXIT_CODES), 130
interrupted (the job keeps running); docs/cli.md lists them all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from contract import events as ev
from contract.errors import CoordError, exit_code
from contract.spec import Overrides, parse_env_flags
from contract.states import JobState
from coordinator.client import clinodes, cliout
from coordinator.client.sdk import AsyncClient
from coordinator.client.sdktypes import Job, JobEvent, as_dict, reformations

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
app = typer.Typer(
    help="coord: run distributed PyTorch jobs that survive machines vanishing.\n\n"
         "Finds coordd through COORD_ADDR, COORD_TOKEN and COORD_CA, ~/.config/coord/config.toml "
         "(address = ..., token = ..., ca = ...), or the coordd running on this machine. "
         "Reference: docs/cli.md.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]})

ACTIVE_SHOWN, ENDED_SHOWN = 1000, 100  # coordd answers at most 1000 jobs a call
EXIT_FOR_STATE = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.CANCELLED: 3}
JobArg = Annotated[str, typer.Argument(help="job id or name (the newest job of that name)")]


class Output(enum.StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for a person, json "
                                                                  "for a script")]
FieldsOpt = Annotated[str, typer.Option("--fields", help="comma-separated columns (or JSON "
                                        "keys), e.g. id,state,nodes; see docs/cli.md")]


def styled(state: JobState) -> str:
    return f"[{cliout.STATE_COLOUR.get(state.value, 'white')}]{state.value}[/]"


def when(time: dt.datetime) -> str:
    return time.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def run(coro) -> None:
    """Run a command's coroutine; turn coord's errors into one line and its exit code."""
    try:
        code = asyncio.run(coro)
    except CoordError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exit_code(exc)) from None
    raise typer.Exit(code or 0)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coord {importlib.metadata.version('coord')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print coord's version")] = False
          ) -> None:
    """coord: run distributed PyTorch jobs that survive machines vanishing."""


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="the job.toml to run")],
    follow: Annotated[bool, typer.Option("--follow/--detach", "-f/-d", help="stream logs and "
                                         "events until the job ends, or print the id and "
                                         "return at once")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run/--no-dry-run", help="validate the file "
                                          "with coordd and run nothing")] = False,
    nodes: Annotated[int | None, typer.Option("--nodes", "-N", help="override nodes.count")]
    = None,
    name: Annotated[str | None, typer.Option("--name", help="override the job's name")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE added to the "
                                                  "file's env (repeatable)")] = None,
) -> None:
    """Submit a job and follow it to the end (exit 0 only if it SUCCEEDED), or --detach.

    --nodes, --name and --env override the file, validated as the file is; the job records
    which flags were given (`coord status`).

    Example: coord submit examples/allreduce/job.toml --nodes 2 --env LR=0.1
    """
    async def go() -> int:
        overrides = Overrides(nodes, name, parse_env_flags(env or []))
        return await _submit(job_file, follow, dry_run, overrides)
    run(go())


async def _submit(job_file: Path, follow: bool, dry_run: bool, overrides: Overrides) -> int:
    async with AsyncClient() as client:
        job = await client.submit(job_file, dry_run=dry_run, overrides=overrides or None)
        if dry_run:
            console.print(f"[green]ok:[/] {job_file} is valid")
            console.print_json(cliout.masked_spec(job.spec_json))
            return 0
        if not follow:  # the id alone on stdout, for `JOB=$(coord submit -d ...)`
            console.print(job.id)
            err.print(f"submitted [bold]{job.id}[/] ({job.name})\n"
                      f"  follow:  coord logs {job.id} -f\n  status:  coord status {job.id}"
                      f"\n  cancel:  coord cancel {job.id}")
            return 0
        console.print(f"submitted [bold]{job.id}[/] ({job.name})")
        return await _follow(client, job.id)


async def _follow(client: AsyncClient, job_id: str) -> int:
    async def show_logs() -> None:
        async for line in client.logs(job_id, follow=True):
            console.print(f"[dim]\\[{escape(line.node_id)} r{line.rank}][/] {escape(line.text)}")

    async def show_events() -> None:
        async for event in client.watch(job_id):
            console.print(f"[bold blue]==>[/] {escape(event.message)}")

    logs = asyncio.create_task(show_logs())
    try:
        await show_events()
        await asyncio.wait_for(logs, 5)
    except asyncio.CancelledError:
        err.print(f"\ndetached; the job keeps running: coord logs {job_id} -f")
        return 130
    except TimeoutError:
        pass
    finally:
        logs.cancel()
    job = await client.get(job_id)
    console.print(f"job {job.id}: {styled(job.state)}" +
                  (f" — {escape(job.reason)}" if job.reason else ""))
    return EXIT_FOR_STATE.get(job.state, 1)


@app.command()
def status(job: Annotated[str | None, typer.Argument(help="job id or name; none: all jobs")]
           = None, output: OutputOpt = Output.table, fields: FieldsOpt = "") -> None:
    """Show one job in detail, or every job as `coord jobs --all` does.

    The detail: overrides, reason, failed ranks with exit codes and log tail, generations.

    Example: coord status my-job
    """
    async def go() -> int:
        async with AsyncClient() as client:
            if job is None:
                _print_jobs(await _list_jobs(client, True), output, fields)
                if output is Output.table:  # the nodes as counts: there may be thousands
                    typer.echo(clinodes.state_counts(await client.node_page(limit=1)))
                return 0
            record = await client.get(job)
            events = [e async for e in client.watch(record.id, follow=False)]
            if output is Output.json:
                typer.echo(json.dumps({**cliout.job_dict(record),
                                       "overrides": _overrides(events),
                                       "events": [as_dict(e) for e in events]}, indent=2))
            else:
                _job_detail(record, events)
            return 0
    run(go())


def _overrides(events: list[JobEvent]) -> list[str]:
    """The flags `coord submit` was given, from the job's first event."""
    first = events[0].payload if events else None
    return list(first.overrides) if isinstance(first, ev.StateChanged) else []


def _job_detail(job: Job, events: list[JobEvent]) -> None:
    console.print(f"[bold]{job.id}[/]  {styled(job.state)}  generation {job.generation}"
                  f"  restarts {job.restarts}")
    console.print(f"  name:     {job.name}\n  created:  {when(job.created_at)}"
                  f"\n  nodes:    {clinodes.members(job.node_ids)}")
    if overrides := _overrides(events):
        console.print(f"  overrides: {escape(' '.join(overrides))}")
    if job.reason:
        console.print(f"  reason:   {escape(job.reason)}")
    for event in events:  # mode "auto" that could not go in-process in this generation
        if isinstance(event.payload, ev.AutoRestarted) and event.generation == job.generation:
            why = event.payload.reason or event.message
            console.print(f"  mode:     restart, not in-process: {escape(why)}")
    for worker in job.failed_workers:
        console.print(f"  [red]rank {worker.rank}[/] on {worker.node_id} exited with code "
                      f"{worker.exit_code} (generation {worker.generation})")
    if job.failure_log_tail:
        console.print("  last lines of the first failed worker:")
        for line in job.failure_log_tail:
            console.print(f"    {escape(line)}")
    history = reformations(events)
    if history:
        console.print("  re-formations (epoch, worker generation):")
    for r in history:  # one line each, never cut: node ids are read and copied
        console.print(f"    {r.epoch:>3} {r.worker_generation:>3}  {when(r.time)}  "
                      f"{r.kind:<8} {r.cause or '-':<14} {r.duration_s:6.2f} s  "
                      f"{', '.join(r.new_members) or '-'}")
    _unreadable(events)


def _unreadable(events: list[JobEvent]) -> None:
    """Events whose data does not fit their kind (another coordd version wrote them, or a
    person edited the store): said, and otherwise left out of the detail above."""
    for event in events:
        if isinstance(event.payload, ev.Unknown) and event.payload.error:
            console.print(f"  [yellow]event {event.seq} unreadable:[/] "
                          f"{escape(event.payload.error)}")


@app.command("jobs")
def jobs_command(
    all_: Annotated[bool, typer.Option("--all/--active", "-a/-A", help="also jobs that ended "
                                       "(active ones first), or only those still running")]
    = False, output: OutputOpt = Output.table, fields: FieldsOpt = "") -> None:
    """List jobs that have not ended, newest first, as squeue does.

    --all: the ended ones too, after them.

    Example: coord jobs --fields id,state,nodes
    """
    async def go() -> int:
        cliout.pick_fields(fields, cliout.JOB_FIELDS, [])  # bad input before any call
        async with AsyncClient() as client:
            jobs = await _list_jobs(client, all_)
        _print_jobs(jobs, output, fields)
        if not jobs and not all_ and output is Output.table:
            err.print("[dim]no active jobs; `coord jobs --all` lists ended ones too[/]")
        return 0
    run(go())


async def _list_jobs(client: AsyncClient, all_: bool) -> list[Job]:
    """Active jobs, newest first; with `all_` the newest ended ones after them. Asked for
    apart: the newest jobs may all have ended, and an older active one must still show."""
    active = await client.jobs(include_finished=False, limit=ACTIVE_SHOWN)
    if not all_:
        return active
    ended = [j for j in await client.jobs(include_finished=True, limit=ENDED_SHOWN)
             if j.terminal]
    return active + ended


def _print_jobs(jobs: list[Job], output: Output, fields: str) -> None:
    names = cliout.pick_fields(fields, cliout.JOB_FIELDS, cliout.JOB_DEFAULT)
    if output is Output.json:
        typer.echo(cliout.as_json(jobs, cliout.JOB_FIELDS, names if fields else None))
    else:
        typer.echo(cliout.table(jobs, cliout.JOB_FIELDS, names))


@app.command()
def logs(
    job: JobArg,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f/-F",
                                         help="keep streaming until the job ends")] = False,
    node: Annotated[str, typer.Option("--node", "-n", help="only this node")] = "",
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="only this rank")] = None,
    tail: Annotated[int, typer.Option(help="only the last N lines")] = 0,
    timestamps: Annotated[bool, typer.Option(
        "--timestamps/--no-timestamps", "-t", help="prefix each line with the time its node read it (UTC)"
    )] = False,
) -> None:
    """Print a job's worker output, each line prefixed with its node and rank.

    Example: coord logs my-job -f --rank 0
    """
    async def go() -> int:
        async with AsyncClient() as client:
            async for line in client.logs(job, follow=follow, node=node, rank=rank, tail=tail):
                prefix = "" if rank is not None else \
                    f"[dim]\\[{escape(line.node_id)} r{line.rank}][/] "
                if timestamps:  # UTC, when the line was read on its node
                    stamp = line.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    prefix = f"[dim]{stamp}[/] {prefix}"
                console.print(prefix + escape(line.text))
        return 0
    run(go())


@app.command()
def cancel(job: JobArg,
           reason: Annotated[str, typer.Option(help="recorded with the job")] = "") -> None:
    """Cancel a job: every worker is stopped and its nodes are released.

    Example: coord cancel my-job
    """
    async def go() -> int:
        async with AsyncClient() as client:
            record = await client.cancel(job, reason)
            console.print(f"cancelling {record.id}")
            final = await client.wait(record.id, timeout=120)
            console.print(f"job {final.id}: {styled(final.state)}")
        return 0
    run(go())


@app.command()
def nodes(job: Annotated[str, typer.Option(help="only this job's nodes")] = "",
          all_: Annotated[bool, typer.Option("--all/--live", "-a/-l", help="also nodes that "
                                             "are GONE (released), or every other one")] = False,
          limit: Annotated[int | None, typer.Option(
              min=0, help=f"at most this many nodes, oldest first (default {clinodes.PAGE}; "
                          "with --output json every one); 0: every one")] = None,
          offset: Annotated[int, typer.Option(min=0, help="skip this many first (the next "
                                                          "page)")] = 0,
          output: OutputOpt = Output.table, fields: FieldsOpt = "") -> None:
    """List nodes with their state, job and resources; with many, their counts per state and
    per job first, then one page.

    Example: coord nodes --job my-job --output json
    """
    async def go() -> int:
        names = cliout.pick_fields(fields, cliout.NODE_FIELDS, cliout.NODE_DEFAULT)
        shown = limit if limit is not None else 0 if output is Output.json else clinodes.PAGE
        async with AsyncClient() as client:
            page = await client.node_page(job, include_gone=all_, limit=shown, offset=offset)
        if output is Output.json:
            typer.echo(cliout.as_json(page.nodes, cliout.NODE_FIELDS, names if fields else None))
        else:
            typer.echo(clinodes.render(page, names, offset))
        return 0
    run(go())


NodeArg = Annotated[str, typer.Argument(help="node id (see `coord nodes`)")]


@app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_command(node: NodeArg,
                 command: Annotated[list[str], typer.Argument(
                     help="the command; as with ssh, its words are joined with spaces and run "
                          "by bash on the node")]) -> None:
    """Run a command on a node, in its work directory, with the node's `python` first on PATH.
    Streams its stdout and stderr; exits with its exit code.

    Example: coord exec node-my-job-3fa2c1 -- nvidia-smi
    """
    async def go() -> int:
        code = 1
        async with AsyncClient() as client:
            async for piece in client.exec_stream(node, " ".join(command)):
                for data, stream in ((piece.stdout, sys.stdout), (piece.stderr, sys.stderr)):
                    if data:
                        stream.buffer.write(data)
                        stream.flush()
                if piece.HasField("exit_code"):
                    code = piece.exit_code
        return code
    run(go())


@app.command()
def upload(node: NodeArg,
           src: Annotated[Path, typer.Argument(help="local file")],
           dst: Annotated[str, typer.Argument(help="path on the node; relative: in its work "
                                              "directory; ending in '/': keep the name")]) -> None:
    """Copy a local file to a node (streamed in 1 MiB chunks; missing directories are made).

    Example: coord upload node-my-job-3fa2c1 data.tar data/
    """
    async def go() -> int:
        async with AsyncClient() as client:
            done = await client.upload(node, src, dst)
            console.print(f"{src} -> {node}:{escape(done.path)} ({done.size} bytes)")
        return 0
    run(go())


@app.command()
def download(node: NodeArg,
             src: Annotated[str, typer.Argument(help="path on the node; relative: in its work "
                                                "directory")],
             dst: Annotated[Path, typer.Argument(help="local file or directory")] = Path(".")
             ) -> None:
    """Copy a file from a node to this machine (streamed in 1 MiB chunks).

    Example: coord download node-my-job-3fa2c1 jobs/my-job-1a2b3c4d/metrics.json .
    """
    async def go() -> int:
        async with AsyncClient() as client:
            target = await client.download(node, src, dst)
            console.print(f"{node}:{escape(src)} -> {target}")
        return 0
    run(go())


@app.command("simulate", add_help_option=False, context_settings={
    "ignore_unknown_options": True, "allow_extra_args": True})
def simulate(ctx: typer.Context) -> None:
    """What a job will cost and when it will finish on spot: a whole run replayed through
    coordd's reconciler on a simulated clock (`coord simulate --help`, docs/simulate.md)."""
    from simulator.cli import main as simulate_main  # matplotlib and the rest, only here
    simulate_main(ctx.args)


debug = typer.Typer(help="Rehearse failures on local nodes.", no_args_is_help=True)
app.add_typer(debug, name="debug")


@debug.command()
def interrupt(node: Annotated[str, typer.Argument(help="node id (see `coord nodes`)")],
              action: Annotated[str, typer.Option(help="terminate, stop, hibernate or "
                                                  "rebalance")] = "terminate") -> None:
    """Make a local node's metadata service announce a spot interruption, as EC2 does two
    minutes before it takes an instance back; its job re-forms without it at a step boundary.

    Example: coord debug interrupt node-my-job-3fa2c1
    """
    async def go() -> int:
        async with AsyncClient() as client:
            await client.interrupt_node(node, action)
            console.print(f"{node}: metadata now announces '{action}'")
        return 0
    run(go())


@app.command()
def dashboard(open_browser: Annotated[bool, typer.Option(
        "--open/--no-open", help="open it in a browser where one exists")] = True) -> None:
    """Print the web dashboard's URL (and open it where a browser exists).

    Sign in with a client token (`coordd token create --role client`, or STATE_DIR/token).
    See docs/dashboard.md.
    """
    import webbrowser

    from coordinator.client.dashboardurl import dashboard_url, has_browser, state_dir
    try:
        url = dashboard_url()
    except CoordError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exit_code(exc)) from None
    typer.echo(url)
    err.print(f"sign in with a client token (on coordd's machine: {state_dir() / 'token'}); "
              f"the certificate is signed by {state_dir() / 'tls' / 'ca.pem'}")
    if open_browser and has_browser():
        webbrowser.open(url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
