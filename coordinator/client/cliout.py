"""How `coord` prints lists of jobs and nodes: aligned columns that never cut an id (at any
terminal width, or in a pipe), JSON for scripts, or the fields a person picks (`--fields`,
like `squeue -o`)."""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from contract.errors import InvalidSpec
from coordinator.client.sdktypes import Job, Node, as_dict, plain

STATE_COLOUR = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
                "RECONFIGURING": "magenta", "LOST": "red", "GONE": "bright_black"}
MASK = "***"  # what the CLI shows in place of a job's env values
REASON_WIDTH = 60  # the table's reason column only; JSON carries it whole

Field = Callable[[Any], Any]
JOB_FIELDS: dict[str, Field] = {
    "id": lambda j: j.id, "name": lambda j: j.name, "state": lambda j: j.state,
    "gen": lambda j: j.generation, "nodes": lambda j: len(j.node_ids),
    "node_ids": lambda j: ",".join(j.node_ids), "restarts": lambda j: j.restarts,
    "created": lambda j: j.created_at, "updated": lambda j: j.updated_at,
    "reason": lambda j: j.reason,
}
JOB_DEFAULT = ["id", "name", "state", "gen", "nodes", "created", "reason"]
NODE_FIELDS: dict[str, Field] = {
    "id": lambda n: n.id, "state": lambda n: n.state, "job": lambda n: n.job_id,
    "host": lambda n: n.host, "provider": lambda n: n.provider,
    "cpus": lambda n: n.resources.cpus, "gpus": lambda n: n.resources.gpus,
    "memory": lambda n: n.resources.memory_bytes, "heartbeat": lambda n: n.last_heartbeat,
    "machine": lambda n: n.machine,
}
NODE_DEFAULT = ["id", "state", "job", "host", "provider", "machine", "cpus", "gpus"]


def pick_fields(text: str, known: dict[str, Field], default: list[str]) -> list[str]:
    """`--fields id,state,nodes` as a list; an unknown name is bad input, naming the known."""
    if not text:
        return default
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise InvalidSpec(f"--fields: unknown field {', '.join(unknown) or repr(text)}; "
                          f"known: {','.join(known)}")
    return names


def _cell(value: Any, name: str) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, enum.Enum):
        return str(value.value)
    text = str(value) if value not in ("", None) else "-"
    return text[:REASON_WIDTH] if name == "reason" else text


def table(rows: Sequence[Any], fields: dict[str, Field], names: list[str]) -> str:
    """Columns two spaces apart, each as wide as its longest cell: nothing is cut but the
    reason. States are coloured; click drops the colour when the output is not a terminal."""
    cells = [[_cell(fields[name](row), name) for name in names] for row in rows]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(names)]
    lines = ["  ".join(n.upper().ljust(w) for n, w in zip(names, widths)).rstrip()]
    for row in cells:
        padded = [text.ljust(w) for text, w in zip(row, widths)]
        for i, name in enumerate(names):
            if name == "state":
                padded[i] = click.style(padded[i], fg=STATE_COLOUR.get(row[i]))
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def masked_spec(spec_json: str) -> str:
    """A job's spec with its [env] values masked: they often carry secrets, and output is
    pasted into tickets and logs."""
    try:
        spec = json.loads(spec_json)
    except ValueError:
        return ""
    if isinstance(spec, dict) and isinstance(spec.get("env"), dict):
        spec["env"] = {key: MASK for key in spec["env"]}
    return json.dumps(spec)


def job_dict(job: Job) -> dict[str, Any]:
    """A job as `-o json` prints it: every field, env values masked."""
    return {**as_dict(job), "spec_json": masked_spec(job.spec_json)}


def as_json(rows: Sequence[Job | Node], fields: dict[str, Field], names: list[str] | None
            ) -> str:
    """Every field of each object, or only `names` (the `--fields` ones)."""
    if names is None:
        return json.dumps([job_dict(row) if isinstance(row, Job) else as_dict(row)
                           for row in rows], indent=2)
    return json.dumps([{name: plain(fields[name](row)) for name in names} for row in rows],
                      indent=2)
