"""`coord`: the command line for users. It holds no gRPC code: everything goes through the SDK.

Exit codes a script can rely on: 0 success (a followed job SUCCEEDED); 1 the job FAILED;
2 bad input (job file, arguments); 3 the job was CANCELLED; 4 coordd unreachable or refused;
130 interrupted (the job keeps running).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coord.v1 import types_pb2
from coordinator.errors import CoordError, InvalidSpec, NotFound
from coordinator.sdk import AsyncClient

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
app = typer.Typer(
    help="coord: run distributed PyTorch jobs that survive machines vanishing.\n\n"
         "Finds coordd through COORD_ADDR, COORD_TOKEN and COORD_CA, ~/.config/coord/config.toml "
         "(address = ..., token = ..., ca = ...), or the coordd running on this machine.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich")

EXIT_FOR_STATE = {types_pb2.JOB_STATE_SUCCEEDED: 0, types_pb2.JOB_STATE_FAILED: 1,
                  types_pb2.JOB_STATE_CANCELLED: 3}
STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
               "RECONFIGURING": "magenta"}
JobArg = Annotated[str, typer.Argument(help="job id or name (the newest job of that name)")]


def state_name(state: int) -> str:
    return types_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def styled(state: int) -> str:
    name = state_name(state)
    return f"[{STATE_STYLE.get(name, 'white')}]{name}[/]"


def when(ts) -> str:
    return dt.datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def run(coro) -> None:
    """Run a command's coroutine; turn coord's errors into messages and exit codes."""
    try:
        code = asyncio.run(coro)
    except InvalidSpec as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except NotFound as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except CoordError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(4) from None
    raise typer.Exit(code or 0)


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="the job.toml to run")],
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="print the job id and return at once")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="stream logs and events until the job ends "
                                              "(the default)")] = True,
    dry_run: Annotated[bool, typer.Option(help="validate the file with coordd; run "
                                          "nothing")] = False,
) -> None:
    """Submit a job. Follows it to the end unless --detach; exit code 0 only if it SUCCEEDED.

    Example: coord submit examples/allreduce/job.toml
    """
    run(_submit(job_file, follow and not detach, dry_run))


async def _submit(job_file: Path, follow: bool, dry_run: bool) -> int:
    async with AsyncClient() as client:
        job = await client.submit(job_file, dry_run=dry_run)
        if dry_run:
            console.print(f"[green]ok:[/] {job_file} is valid")
            console.print_json(job.spec_json)
            return 0
        console.print(f"submitted [bold]{job.id}[/] ({job.name})")
        if not follow:
            console.print(f"  follow:  coord logs {job.id} -f\n  status:  coord status {job.id}"
                          f"\n  cancel:  coord cancel {job.id}")
            return 0
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
           = None) -> None:
    """Show one job in detail (generations, failures with exit codes and log tail), or all.

    Example: coord status my-job
    """
    run(_status(job))


async def _status(ref: str | None) -> int:
    async with AsyncClient() as client:
        if ref is None:
            _jobs_table(await client.jobs())
            return 0
        job = await client.get(ref)
        events = [e async for e in client.watch(job.id, follow=False)]
        _job_detail(job, events)
        return 0


def _job_detail(job: types_pb2.Job, events: list[types_pb2.JobEvent]) -> None:
    console.print(f"[bold]{job.id}[/]  {styled(job.state)}  generation {job.generation}"
                  f"  restarts {job.restarts}")
    console.print(f"  name:     {job.name}\n  created:  {when(job.created_at)}"
                  f"\n  nodes:    {', '.join(job.node_ids) or '-'}")
    if job.reason:
        console.print(f"  reason:   {escape(job.reason)}")
    for worker in job.failed_workers:
        console.print(f"  [red]rank {worker.rank}[/] on {worker.node_id} exited with code "
                      f"{worker.exit_code} (generation {worker.generation})")
    if job.failure_log_tail:
        console.print("  last lines of the first failed worker:")
        for line in job.failure_log_tail:
            console.print(f"    {escape(line)}")
    history = [e for e in events if e.kind == "generation.started"]
    if history:
        table = Table("gen", "started", "cause", "nodes", "took", title="generations")
        for event in history:
            data = json.loads(event.data_json or "{}")
            table.add_row(str(event.generation), when(event.time), data.get("cause", ""),
                          ", ".join(data.get("new_members", [])), f"{data.get('took_s', 0):.2f} s")
        console.print(table)


@app.command("jobs")
def jobs_command(all_: Annotated[bool, typer.Option("--all", "-a",
                                                    help="include finished jobs")] = True) -> None:
    """List jobs, newest first.

    Example: coord jobs
    """
    async def go() -> int:
        async with AsyncClient() as client:
            _jobs_table(await client.jobs(include_finished=all_))
        return 0
    run(go())


def _jobs_table(jobs: list[types_pb2.Job]) -> None:
    table = Table("id", "name", "state", "gen", "nodes", "created", "reason")
    for job in jobs:
        table.add_row(job.id, job.name, styled(job.state), str(job.generation),
                      str(len(job.node_ids)), when(job.created_at), escape(job.reason[:60]))
    console.print(table)


@app.command()
def logs(
    job: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming")] = False,
    node: Annotated[str, typer.Option("--node", "-n", help="only this node")] = "",
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="only this rank")] = None,
    tail: Annotated[int, typer.Option(help="only the last N lines")] = 0,
    timestamps: Annotated[bool, typer.Option(
        "--timestamps", "-t", help="prefix each line with the time its node read it (UTC)"
    )] = False,
) -> None:
    """Print a job's worker output, each line prefixed with its node and rank.

    Example: coord logs my-job -f --rank 0
    """
    async def go() -> int:
        async with AsyncClient() as client:
            async for line in client.logs(job, follow=follow, node=node, rank=rank, tail=tail):
                prefix = "" if rank is not None else f"[dim]\\[{escape(line.node_id)} r{line.rank}][/] "
                if timestamps:
                    stamp = line.time.ToDatetime().isoformat(timespec="milliseconds")
                    prefix = f"[dim]{stamp}Z[/] {prefix}"
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
          all_: Annotated[bool, typer.Option("--all", "-a", help="include gone nodes")] = False,
          ) -> None:
    """List nodes with their state, job and resources.

    Example: coord nodes --job my-job
    """
    async def go() -> int:
        async with AsyncClient() as client:
            table = Table("id", "state", "job", "host", "provider", "cpus", "gpus")
            for n in await client.nodes(job, include_gone=all_):
                table.add_row(n.id, types_pb2.NodeState.Name(n.state).removeprefix("NODE_STATE_"),
                              n.job_id or "-", n.host, n.provider, str(n.resources.cpus),
                              str(n.resources.gpus))
            console.print(table)
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

    Example: coord exec my-job-3fa2c1 -- nvidia-smi
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

    Example: coord upload my-job-3fa2c1 data.tar data/
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

    Example: coord download my-job-3fa2c1 jobs/my-job-1a2b3c4d/metrics.json .
    """
    async def go() -> int:
        async with AsyncClient() as client:
            target = await client.download(node, src, dst)
            console.print(f"{node}:{escape(src)} -> {target}")
        return 0
    run(go())


debug = typer.Typer(help="Rehearse failures on local nodes.", no_args_is_help=True)
app.add_typer(debug, name="debug")


@debug.command()
def interrupt(node: Annotated[str, typer.Argument(help="node id (see `coord nodes`)")],
              action: Annotated[str, typer.Option(help="terminate, stop, hibernate or "
                                                  "rebalance")] = "terminate") -> None:
    """Make a local node's metadata service announce a spot interruption, as EC2 does two
    minutes before it takes an instance back; its job re-forms without it at a step boundary.

    Example: coord debug interrupt my-job-3fa2c1
    """
    async def go() -> int:
        async with AsyncClient() as client:
            await client.interrupt_node(node, action)
            console.print(f"{node}: metadata now announces '{action}'")
        return 0
    run(go())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
