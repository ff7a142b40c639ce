"""coordd's settings. One precedence rule: command-line flags > COORDD_* environment >
the TOML config file (--config or COORDD_CONFIG) > these defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from contract.instance import default_state_dir
from contract.spec import AwsResources, SlurmResources


class AwsSettings(BaseModel):
    """The `aws` provider (`[aws]` in the config file, COORDD_AWS__KEY in the environment).
    Credentials and, unless `region` is set, the region come from the standard AWS chain."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="offer the aws provider to jobs")
    region: str | None = Field(None, description="default: AWS_REGION / the profile's region")
    profile: str | None = Field(None, description="a profile in ~/.aws/config "
                                                  "(default: AWS_PROFILE)")
    endpoint_url: str | None = Field(None, description="EC2 endpoint override (tests, VPC "
                                                       "endpoints)")
    defaults: AwsResources = Field(default_factory=AwsResources,
                                   description="launch settings a job's [resources.aws] overrides")
    agent_install: str = Field("", description="shell run by user-data before the agent starts "
                                                "(default: the AMI already has coord-agent)")
    agent_command: str = Field("coord-agent", description="the agent executable on the AMI")
    agent_workdir: str = "/var/lib/coord-agent"
    imds_endpoint: str = Field("http://169.254.169.254", description="metadata service agents "
                                                                     "watch for spot notices")
    fallback_backoff_s: float = Field(1.0, ge=0, description="first pause between launch choices")
    fallback_backoff_max_s: float = Field(30.0, ge=0)
    capacity_rounds: int = Field(2, ge=1, le=10, description="passes over the choices before a "
                                                             "launch gives up for now")
    api_attempts: int = Field(4, ge=1, le=10, description="tries per call on throttling / 5xx")
    permanent_error_hold_s: float = Field(60.0, ge=0, description="a job whose launch was "
                                          "refused for good (bad AMI, no permission) is not "
                                          "retried against AWS for this long")
    join_timeout_s: float = Field(600.0, gt=0, description="an instance's agent must register "
                                  "within this after its launch (booting takes minutes)")


class SshHost(BaseModel):
    """One machine the `ssh` provider may run a node on (`[[ssh.hosts]]`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                      description="how coord names the host in events and errors")
    address: str = Field(min_length=1, description="host name or IP that coordd connects to")
    port: int = Field(22, ge=1, le=65535)
    user: str | None = Field(None, description="default: the user coordd runs as")
    key_file: Path | None = Field(None, description="private key (default: ~/.ssh/id_*)")
    known_hosts: Path | None = Field(None, description="trusted host keys (default: "
                                                       "~/.ssh/known_hosts)")
    check_host_key: bool = Field(True, description="false accepts any host key: only on a "
                                                   "network you trust completely")
    remote_dir: str | None = Field(None, description="default: ssh.remote_dir")


class SshSettings(BaseModel):
    """The `ssh` provider (`[ssh]` in the config file): existing hosts, one node per host."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[SshHost] = Field(default_factory=list, description="the pool jobs take from")
    remote_dir: str = Field("~/.coord", description="on each host: the shipped package, the "
                                                    "venv, agent.log, the node's work dir")
    python: str = Field("python3", description="interpreter on the hosts that creates the venv")
    venv: str = Field("", description="the agent's venv on the hosts (default: "
                                      "REMOTE_DIR/venv); an existing one is reused")
    system_site_packages: bool = Field(False, description="let the venv see the host's "
                                                          "packages (e.g. its CUDA torch)")
    install_command: str = Field("", description="shell that installs {wheel} into {venv} "
                                                 "({python} is ssh.python); default: venv + pip")
    connect_timeout_s: float = Field(15.0, gt=0)
    bootstrap_timeout_s: float = Field(300.0, gt=0, description="connect to registered, per "
                                                                "host")

    @model_validator(mode="after")
    def _unique_names(self) -> SshSettings:
        names = [host.name for host in self.hosts]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"ssh.hosts: names must be unique, repeated: {', '.join(dupes)}")
        return self


class SlurmSettings(BaseModel):
    """The `slurm` provider (`[slurm]` in the config file): one Slurm job per node, each
    running `coord-agent` (docs/providers-slurm.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="offer the slurm provider to jobs")
    login: SshHost | None = Field(None, description="run sbatch/squeue/scancel on this login "
                                                    "node over SSH (default: on coordd's host)")
    connect_timeout_s: float = Field(15.0, gt=0)
    workdir: str = Field("~/.coord/slurm", description="on the cluster's shared file system: "
                                                       "the agents' credentials (0600), logs "
                                                       "and work directories")
    agent_command: str = Field("coord-agent", min_length=1,
                               description="coord-agent as the compute nodes run it")
    defaults: SlurmResources = Field(default_factory=SlurmResources,
                                     description="what a job's [resources.slurm] overrides")
    poll_interval_s: float = Field(5.0, gt=0, description="how often squeue is asked")
    signal_before_end_s: int = Field(120, ge=0, le=65535,
                                     description="SIGTERM this long before an allocation's "
                                                 "time limit (--signal=B:TERM@N)")
    join_timeout_s: float = Field(600.0, gt=0, description="a running allocation's agent must "
                                  "register within this (time queued does not count)")


class LocalSettings(BaseModel):
    """The `local` provider (`[local]` in the config file, COORDD_LOCAL__KEY in the
    environment): what one node takes of this machine's memory, to refuse at submit a job
    whose nodes cannot all run here. The defaults are an idle agent's and a minimal worker's
    resident memory (torch imported, one gloo group; a model and its data add to it)."""

    model_config = ConfigDict(extra="forbid")

    agent_memory_mb: float = Field(70.0, ge=0, description="one coord-agent process")
    worker_memory_mb: float = Field(225.0, ge=0, description="one worker, at least")


class SimSettings(BaseModel):
    """The `sim` provider (`[sim]` in the config file): nodes are simulated agents run by
    load generators (bench/scaleagents.py), for benchmarks and scale tests."""

    model_config = ConfigDict(extra="forbid")

    spool_dir: Path | None = Field(None, description="where coordd leaves launches for the "
                                                     "load generators (unset: no sim provider)")


class CoorddSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COORDD_", env_nested_delimiter="__",
                                      extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir,
                            description="SQLite database, token, bundles, checkpoints, node dirs")
    database_url: str = Field("", description="where jobs and nodes are kept: "
                              "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB for several "
                              "coordd on one database (docs/postgresql.md); default: the "
                              "SQLite file STATE_DIR/coord.db")
    lease_s: float = Field(3.0, ge=0.5, le=60, description="with PostgreSQL: the leader "
                           "renews its lease well within this; a standby takes over once it "
                           "ran out")
    listen: str = Field("127.0.0.1:7070", description="HOST:PORT for gRPC (port 0: any free port)")
    advertise: str = Field("", description="address agents use to reach coordd (default: listen)")
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_timeout_s: float = Field(5.0, gt=0, description="no heartbeat this long: node lost")
    reconnect_grace_s: float = Field(2.0, ge=0, description="stream down this long: node lost")
    restart_grace_s: float = Field(30.0, ge=0, description="after coordd restarts, nodes must "
                                                         "reconnect within this")
    join_timeout_s: float = Field(120.0, gt=0, description="a new node must register within this")
    node_retention_s: float = Field(3600.0, ge=0, description="a LOST or GONE node is "
                                    "removed (its row, `coord nodes`) this long after it died, "
                                    "unless a running job still counts it; its job's events "
                                    "keep what happened")
    stop_grace_s: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL for stopped workers")
    scale_up_settle_s: float = Field(2.0, ge=0, description="batch joins that arrive within this")
    scale_up_min_runtime_s: float = Field(30.0, ge=0,
                                          description="a generation runs this long before a "
                                                      "scale-up may restart it")
    initial_full_wait_s: float = Field(60.0, ge=0,
                                       description="wait this long for all nodes before "
                                                   "starting with nodes.min")
    provider_retry_s: float = Field(5.0, ge=0)
    finish_grace_s: float = Field(60.0, ge=0, description="in-process jobs: members whose "
                                  "replicas did not reach the last step are stopped this long "
                                  "after one replica did")
    metrics_listen: str = Field("", description="HOST:PORT for Prometheus /metrics (empty: off)")
    dashboard_listen: str = Field("", description="HOST:PORT for the web dashboard, HTTPS with "
                                                  "coordd's certificate (empty: off; port 0: "
                                                  "any free port); see docs/dashboard.md")
    max_message_bytes: int = Field(80 * 2**20, ge=2**20, le=2**31 - 1,
                                   description="largest gRPC message either way (a bundle is "
                                               "at most 64 MiB)")
    max_log_line_bytes: int = Field(16 * 1024, ge=256,
                                    description="longer worker log lines are cut (agents cut "
                                                "at 16 KiB too)")
    max_log_bytes_per_job: int = Field(256 * 2**20, ge=2**20,
                                       description="stored log text per job; beyond it lines "
                                                   "are dropped and one notice is kept")
    tls_cert: Path | None = Field(None, description="server certificate (PEM) you supply; "
                                                    "default: generated into STATE_DIR/tls")
    tls_key: Path | None = Field(None, description="its private key (PEM), with tls_cert")
    tls_ca: Path | None = Field(None, description="CA clients should trust, with tls_cert "
                                                  "(default: tls_cert itself)")
    tls_extra_names: list[str] = Field(default_factory=list,
                                       description="more DNS names or IPs for the generated "
                                                   "server certificate")
    insecure_plaintext: bool = Field(False, description="serve gRPC WITHOUT TLS: tokens and "
                                                        "job specs cross the network readable "
                                                        "by anyone on the path")
    log_level: str = "info"
    log_format: Literal["plain", "console", "json"] = Field(
        "plain", description="the terminal: plain (a few lines, warnings, errors), console "
                             "(every log entry, readable) or json (every entry as JSON)")
    log_file: Path | None = Field(None, description="coordd's structured log, one JSON entry "
                                                    "a line (default: STATE_DIR/coordd.log)")
    aws: AwsSettings = Field(default_factory=AwsSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    sim: SimSettings = Field(default_factory=SimSettings)

    config_file: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _dashboard_needs_tls(self) -> CoorddSettings:
        if self.dashboard_listen and self.insecure_plaintext:
            raise ValueError("dashboard_listen: the dashboard is served over TLS only (its "
                             "session cookie is Secure); drop insecure_plaintext to use it")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        path = os.environ.get("COORDD_CONFIG")
        sources = [init_settings, env_settings]
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if url and not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
            raise ValueError("database_url must start with postgresql+asyncpg:// or "
                             f"sqlite+aiosqlite:///, not {url.partition(':')[0]!r}")
        return url

    @property
    def pause_threshold_s(self) -> float:
        """A worker that did not run this long during a step commits nothing of it: coordd
        drops a node only after `heartbeat_timeout_s` of silence, which needs a freeze of at
        least the timeout less one heartbeat interval; half of that leaves room for a late
        tick, and keeps a busy machine's scheduling hiccups from voiding steps."""
        return max(0.2, (self.heartbeat_timeout_s - self.heartbeat_interval_s) / 2)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "coord.db"

    @property
    def database(self) -> str | Path:
        """What Store.open takes: the URL, else the SQLite file in the state directory."""
        return self.database_url or self.db_path

    @property
    def token_path(self) -> Path:
        """The first client token's plaintext, for `coord` on this machine."""
        return self.state_dir / "token"

    @property
    def agent_token_path(self) -> Path:
        """The agent join token's plaintext, for the providers coordd runs."""
        return self.state_dir / "agent-token"

    @property
    def tokens_path(self) -> Path:
        """Every token, hashed."""
        return self.state_dir / "tokens.json"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.state_dir / "coordd.log"

