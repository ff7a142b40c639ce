"""coordd's settings. One precedence rule: command-line flags > COORDD_* environment >
the TOML config file (--config or COORDD_CONFIG) > these defaults."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "coord"


class CoorddSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COORDD_", extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir,
                            description="SQLite database, token, bundles, checkpoints, node dirs")
    listen: str = Field("127.0.0.1:7070", description="HOST:PORT for gRPC (port 0: any free port)")
    advertise: str = Field("", description="address agents use to reach coordd (default: listen)")
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_timeout_s: float = Field(5.0, gt=0, description="no heartbeat this long: node lost")
    reconnect_grace_s: float = Field(2.0, ge=0, description="stream down this long: node lost")
    restart_grace_s: float = Field(30.0, ge=0, description="after coordd restarts, nodes must "
                                                         "reconnect within this")
    join_timeout_s: float = Field(120.0, gt=0, description="a new node must register within this")
    stop_grace_s: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL for stopped workers")
    scale_up_settle_s: float = Field(2.0, ge=0, description="batch joins that arrive within this")
    scale_up_min_runtime_s: float = Field(30.0, ge=0,
                                          description="a generation runs this long before a "
                                                      "scale-up may restart it")
    initial_full_wait_s: float = Field(60.0, ge=0,
                                       description="wait this long for all nodes before "
                                                   "starting with nodes.min")
    provider_retry_s: float = Field(5.0, ge=0)
    metrics_listen: str = Field("", description="HOST:PORT for Prometheus /metrics (empty: off)")
    max_message_bytes: int = Field(80 * 2**20, ge=2**20)
    log_level: str = "info"
    log_json: bool | None = None

    config_file: Path | None = Field(None, exclude=True)

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

    @property
    def db_path(self) -> Path:
        return self.state_dir / "coord.db"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "token"

    @property
    def addr_path(self) -> Path:
        """coordd writes the address it listens on here, for `coord` on the same machine."""
        return self.state_dir / "coordd.addr"
