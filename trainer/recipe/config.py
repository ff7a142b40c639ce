"""The recipe as data: a TOML file read into pydantic models that refuse unknown keys.

Every number of a training run lives here (model, phase table, optimizer, schedule, data,
target), so a run is reproduced by its file plus `--set key=value` overrides. Errors name the
file and the dotted key (`phases[1].size`), because a 30-line phase table is easy to mistype.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .phases import Phase

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    arch: Literal["resnet18", "resnet50"] = "resnet50"
    num_classes: int = Field(1000, ge=2)
    width: int = Field(64, ge=4, description="channels of the first stage (64 in the paper)")
    stem: Literal["imagenet", "small"] = "imagenet"  # small: 3x3 stride-1 stem, no max-pool


class DataConfig(_Strict):
    train_dir: str = "data/train"
    val_dir: str = "data/val"
    threads: int = Field(2, ge=1, description="DALI CPU threads per rank")
    flip: bool = True
    min_scale: float = Field(0.35, gt=0.0, le=1.0, description="random resized crop area")
    val_batch: int = Field(128, ge=1, description="per rank")
    val_crop_fraction: float = Field(0.875, gt=0.0, le=1.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class OptimizerConfig(_Strict):
    lr: float = Field(0.1, gt=0.0, description="peak LR for a global batch of base_batch")
    base_batch: int = Field(256, ge=1)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-5, ge=0.0, description="never applied to BN or biases")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)


class ScheduleConfig(_Strict):
    warmup_epochs: float = Field(2.0, ge=0.0)
    warmup_start: float = Field(0.1, ge=0.0, le=1.0, description="fraction of peak at 0")
    decay: Literal["linear", "cosine"] = "linear"
    final_factor: float = Field(0.0, ge=0.0, le=1.0, description="fraction of peak at the end")


class TargetConfig(_Strict):
    metric: Literal["top1", "top5"] = "top5"
    accuracy: float = Field(gt=0.0, le=1.0)


class RunConfig(_Strict):
    seed: int = 0
    ckpt_every: int = Field(100, ge=1, description="steps between durable checkpoints")
    snapshot_every: int = Field(0, ge=0, description="steps between node-local snapshots")
    log_every: int = Field(20, ge=1, description="steps between progress lines")
    torch_threads: int = Field(0, ge=0, description="0: torch's default")
    pg_timeout_s: float = Field(300.0, gt=0.0)


class RecipeConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    phases: list[Phase] = Field(min_length=1)
    target: TargetConfig | None = None
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _phases_tile_the_run(self) -> RecipeConfig:
        """Phases start at epoch 0 and each starts where the previous one ended."""
        if self.phases[0].epochs[0] != 0:
            raise ValueError("phases[0].epochs must start at 0")
        for i in range(1, len(self.phases)):
            if self.phases[i].epochs[0] != self.phases[i - 1].epochs[1]:
                raise ValueError(f"phases[{i}].epochs must start where phases[{i - 1}] ends "
                                 f"({self.phases[i - 1].epochs[1]})")
        return self

    @property
    def total_epochs(self) -> float:
        return self.phases[-1].epochs[1]


def _key(loc: tuple[int | str, ...]) -> str:
    """('phases', 1, 'size') -> 'phases[1].size'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = _key(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            where = f"key '{key}'" if key else "recipe"
            lines.append(f"{source}: {where}: {err['msg']}")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def resolve_path(name: str | Path) -> Path:
    """A path, or the name of a bundled config (`digits_cpu` -> trainer/configs/digits_cpu.toml)."""
    path = Path(name)
    if path.exists():
        return path
    bundled = CONFIG_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if bundled.exists():
        return bundled
    raise ConfigError(f"no recipe at {name!r} (nor a bundled one in {CONFIG_DIR})")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings (value in TOML syntax, bare words as strings) into `raw`."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a table")
        node[leaf] = parsed
    return raw


def parse_config(raw: dict[str, Any], source: str = "<recipe>") -> RecipeConfig:
    try:
        return RecipeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None


def load_config(name: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read, override and validate a recipe; ConfigError says what is wrong and where."""
    path = resolve_path(name)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(apply_overrides(raw, overrides or []), str(path))
