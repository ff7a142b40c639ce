"""The job spec: `job.toml` read with tomllib into a pydantic model that refuses unknown keys.

The same model validates on the client (`coord submit`, for an early, local error) and in
coordd (the client is not trusted), so a bad file is refused before any node is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.errors import InvalidSpec
from contract.workerenv import RESERVED

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # fullmatch: `$` would allow "K\n"
MAX_COMMAND = 64 * 1024
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_ENTRIES = 256

Command = Annotated[str, Field(min_length=1, max_length=MAX_COMMAND)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NodesSpec(_Strict):
    count: int = Field(3, ge=1, le=1024, description="target number of nodes")
    min: int | None = Field(None, ge=1, le=1024,
                            description="fewest nodes the job may run on (default: count)")
    wait_for_min_s: float = Field(600.0, ge=0, le=7 * 24 * 3600,
                                  description="how long to wait below `min` before failing")
    spares: int = Field(0, ge=0, le=64,
                        description="extra nodes kept booted and idle (with a warm interpreter) "
                                    "so a lost node is replaced at once; they cost as much as "
                                    "working nodes")

    @model_validator(mode="after")
    def _min_not_above_count(self) -> NodesSpec:
        if self.min is not None and self.min > self.count:
            raise ValueError(f"min ({self.min}) must not exceed count ({self.count})")
        return self

    @property
    def minimum(self) -> int:
        return self.count if self.min is None else self.min


InstanceType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$", max_length=64)]
SecurityGroupId = Annotated[str, Field(pattern=r"^sg-[0-9a-f]{8,17}$")]


class AwsChoice(_Strict):
    """Where and how to get an instance: the part of `[resources.aws]` a fallback may change."""

    instance_type: InstanceType | None = None
    subnet_id: str | None = Field(None, pattern=r"^subnet-[0-9a-f]{8,17}$")
    availability_zone: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+[a-z]$")
    spot: bool | None = None

    @model_validator(mode="after")
    def _subnet_or_zone(self) -> AwsChoice:
        if self.subnet_id and self.availability_zone:
            raise ValueError("give subnet_id or availability_zone, not both (a subnet lies in "
                             "one zone)")
        return self


class AwsFallback(AwsChoice):
    @model_validator(mode="after")
    def _changes_something(self) -> AwsFallback:
        if all(getattr(self, key) is None for key in AwsChoice.model_fields):
            raise ValueError("a fallback must set instance_type, subnet_id, availability_zone "
                             "or spot")
        return self


class AwsResources(AwsChoice):
    """`[resources.aws]`: the first choice, and the fallbacks tried in order on capacity
    errors. Unset keys take coordd's `[aws.defaults]`."""

    ami: str | None = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$")
    security_group_ids: list[SecurityGroupId] = Field(default_factory=list, max_length=16)
    key_name: str | None = Field(None, min_length=1, max_length=255)
    placement_group: str | None = Field(None, min_length=1, max_length=255)
    iam_instance_profile: str | None = Field(None, min_length=1, max_length=2048,
                                             description="instance profile name or ARN")
    tags: dict[Annotated[str, Field(min_length=1, max_length=128)],
               Annotated[str, Field(max_length=256)]] = Field(default_factory=dict, max_length=40)
    fallbacks: list[AwsFallback] = Field(default_factory=list, max_length=16)

    @field_validator("tags")
    @classmethod
    def _tags_not_reserved(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            if key.lower().startswith(("coord:", "aws:")):
                raise ValueError(f"tag {key!r}: the prefixes 'coord:' and 'aws:' are reserved")
        return tags


SlurmName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class SlurmResources(_Strict):
    """`[resources.slurm]`: what each node's allocation (one Slurm job) asks for. Unset keys
    take coordd's `[slurm.defaults]`, then the cluster's own defaults."""

    partition: SlurmName | None = None
    account: SlurmName | None = None
    qos: SlurmName | None = None
    time: str | None = Field(None, pattern=r"^(\d+-)?\d+(:\d{1,2}){0,2}$",
                             description="per allocation: MINUTES, H:MM:SS or D-HH:MM:SS")
    gres: str | None = Field(None, pattern=r"^[A-Za-z0-9_:,.-]{1,256}$", description="e.g. gpu:8")
    constraint: str | None = Field(None, pattern=r"^[A-Za-z0-9_&|!()\[\]*,:.-]{1,256}$")
    exclusive: bool | None = Field(None, description="a whole Slurm node per coord node "
                                                     "(default: true)")
    sbatch_options: list[Annotated[str, Field(pattern=r"^--[a-z][a-z-]*(=.{1,512})?$")]] = Field(
        default_factory=list, max_length=32,
        description="more sbatch options, each `--name` or `--name=value`")

    @field_validator("sbatch_options")
    @classmethod
    def _not_coords(cls, options: list[str]) -> list[str]:
        for option in options:
            if option.partition("=")[0][2:] in SBATCH_SET_BY_COORD:
                raise ValueError(f"{option!r}: coord sets {option.partition('=')[0]} itself")
        return options


# One node is one Slurm job that coord names, places and signals itself.
SBATCH_SET_BY_COORD = frozenset({
    "job-name", "comment", "output", "error", "input", "nodes", "ntasks", "chdir", "parsable",
    "wrap", "array", "test-only", "export", "signal", "requeue", "no-requeue", "hold"})


class ResourcesSpec(_Strict):
    provider: Literal["local", "ssh", "aws", "slurm", "sim"] = "local"
    instance_type: str | None = Field(None, max_length=64)
    spot: bool = False
    aws: AwsResources | None = None
    slurm: SlurmResources | None = None

    @model_validator(mode="after")
    def _instance_type_once(self) -> ResourcesSpec:
        if (self.aws and self.aws.instance_type and self.instance_type
                and self.aws.instance_type != self.instance_type):
            raise ValueError("instance_type and aws.instance_type differ: give it once")
        return self


class FaultToleranceSpec(_Strict):
    """`[fault_tolerance]`: how the job survives losing a node.

    auto (the default): in-process where it works, else restart. Workers get both
    environments; once every worker of a generation has joined the job's quorum service
    (a script using `trainer.elastic.inprocess`, torchft installed), a node loss re-forms the
    replicas in place. Until then, and for any other script, a node loss restarts the group.
    inprocess: always in-process (the script must use `trainer.elastic.inprocess`).
    restart: every worker stops and the group restarts at the new size from the newest
    snapshot or checkpoint (works with any script using `trainer.elastic`).
    In-process needs torchft where coordd runs and on every node (`pip install 'coord[elastic]'`);
    without it auto runs in restart mode and says so (an event, a line in `coord status`).
    """

    mode: Literal["auto", "inprocess", "restart"] = "auto"


class JobSpec(_Strict):
    name: str = Field(pattern=NAME_RE, description="letters, digits, '.', '_', '-'")
    run: Command
    setup: Command | None = None
    nodes: NodesSpec = NodesSpec()
    nproc_per_node: int = Field(1, ge=1, le=64)
    env: dict[str, Annotated[str, Field(max_length=MAX_ENV_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_ENV_ENTRIES)
    workdir: str = Field(".", max_length=4096,
                         description="directory shipped to every node, relative to the job file")
    files: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list, max_length=1024,
        description="glob patterns inside workdir to ship (default: everything)")
    checkpoint_dir: str | None = Field(None, max_length=4096)
    resources: ResourcesSpec = ResourcesSpec()
    max_restarts: int = Field(0, ge=0, le=1000)
    fault_tolerance: FaultToleranceSpec = FaultToleranceSpec()

    @property
    def min_world_size(self) -> int:
        """Workers (in-process: replicas) the job runs with at least."""
        return self.nodes.minimum * self.nproc_per_node

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not ENV_KEY_RE.fullmatch(key):
                raise ValueError(f"env key {key!r} is not a valid variable name")
            if key in RESERVED:
                raise ValueError(f"env key {key!r} is set by coord for every worker")
            if "\x00" in value:
                raise ValueError(f"env value of {key!r} contains a NUL byte")
        return env

    @field_validator("run", "setup")
    @classmethod
    def _no_nul(cls, command: str | None) -> str | None:
        if command is not None and "\x00" in command:
            raise ValueError("command contains a NUL byte")
        return command

    def to_json(self) -> str:
        return self.model_dump_json()


@dataclasses.dataclass(frozen=True)
class Overrides:
    """What `coord submit --nodes/--name/--env` changes in a job file, applied to its data
    before validation so a bad value is refused exactly as in the file, naming the flag."""

    nodes: int | None = None
    name: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.nodes is not None or self.name is not None or bool(self.env)

    def apply(self, data: dict) -> dict:
        data = dict(data)
        if self.nodes is not None:
            nodes = data.get("nodes")
            data["nodes"] = {**(nodes if isinstance(nodes, dict) else {}), "count": self.nodes}
        if self.name is not None:
            data["name"] = self.name
        if self.env:
            env = data.get("env")
            data["env"] = {**(env if isinstance(env, dict) else {}), **self.env}
        return data

    def describe(self) -> list[str]:
        """The flags as recorded with the job: env values left out (they may be secrets)."""
        return ([f"--nodes {self.nodes}"] * (self.nodes is not None)
                + [f"--name {self.name}"] * (self.name is not None)
                + [f"--env {key}" for key in self.env])

    def _keys(self) -> dict[tuple, str]:
        """The exact keys the flags set, each with its flag."""
        keys = {("nodes", "count"): "--nodes"} if self.nodes is not None else {}
        keys |= {("name",): "--name"} if self.name is not None else {}
        return keys | {("env", key): "--env" for key in self.env}

    def flag_for(self, loc: tuple, message: str = "") -> str | None:
        """The flag that set the key an error is about: the key itself, or the table holding
        it when the error names it (min vs count; an env key's rule)."""
        loc = tuple(str(part) for part in loc)
        for key, flag in self._keys().items():
            if loc == key or (key[:len(loc)] == loc and
                              re.search(rf"\b{re.escape(key[-1])}\b", message)):
                return flag
        return None


# What coordd records of a submit's flags (Overrides.describe): their shape only, bounded.
RECORDED_FLAG_RE = re.compile(r"--nodes \d{1,7}|--name [A-Za-z0-9][A-Za-z0-9._-]{0,62}"
                              r"|--env [A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_RECORDED_FLAGS = 1 + 1 + MAX_ENV_ENTRIES


def check_recorded_flags(flags: list[str]) -> list[str]:
    """The `overrides` a client sent with a submit, as coordd records them; InvalidSpec for
    anything but `--nodes N`, `--name NAME`, `--env KEY` (never a value)."""
    if len(flags) > MAX_RECORDED_FLAGS:
        raise InvalidSpec(f"field 'overrides': at most {MAX_RECORDED_FLAGS} flags")
    for flag in flags:
        if not RECORDED_FLAG_RE.fullmatch(flag):
            raise InvalidSpec(f"field 'overrides': {flag[:80]!r} is not '--nodes N', "
                              "'--name NAME' or '--env KEY'")
    return list(flags)


def parse_env_flags(values: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` flags as a dict (the keys are checked with the file's rules later)."""
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec(f"--env {item[:80]!r}: give KEY=VALUE")
        env[key] = value
    return env


def _describe(error: dict, overrides: Overrides | None) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    flag = overrides.flag_for(error["loc"], error["msg"]) if overrides else None
    where = f"{flag} (key '{key}')" if flag else f"key '{key}'"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing required key '{key}'"
    got = error.get("input")
    got_text = f", got {got!r}"[:120] if not isinstance(got, dict) else ""
    return f"{where}: {error['msg']}{got_text}"


def explain(exc: ValidationError, source: str, overrides: Overrides | None = None) -> InvalidSpec:
    """One readable line per problem, each naming the file and the key (and the flag that
    set it)."""
    lines = [f"{source}: {_describe(e, overrides)}" for e in exc.errors(include_url=False)]
    return InvalidSpec("invalid job spec:\n  " + "\n  ".join(lines))


def parse_spec(data: dict, source: str, overrides: Overrides | None = None) -> JobSpec:
    try:
        return JobSpec.model_validate(overrides.apply(data) if overrides else data)
    except ValidationError as exc:
        raise explain(exc, source, overrides) from None


def parse_spec_json(text: str, source: str) -> JobSpec:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also integers over 4300 digits
        raise InvalidSpec(f"{source}: spec is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: spec must be a table/object")
    return parse_spec(data, source)


def load_job_file(path: str | Path, overrides: Overrides | None = None) -> JobSpec:
    """Read and validate a job.toml (with `overrides` applied); every error names the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidSpec(f"{path}: no such file") from None
    except OSError as exc:  # a directory, no permission
        raise InvalidSpec(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, UnicodeDecodeError, huge ints
        raise InvalidSpec(f"{path}: not valid TOML: {str(exc)[:300]}") from None
    return parse_spec(data, str(path), overrides)
