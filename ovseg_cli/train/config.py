"""The training config: one YAML file of sections, defaults following the paper (IV-B).

    model:  the OV2VSS model (ModelConfig), saved in every checkpoint
    data:   clip sampling and augmentation
    optim:  AdamW, warm-up and schedule, accumulation, clipping, precision
    loss:   the weights of Eq. 15
    run:    seed, logging, validation, checkpoints, device

The learning rate is small (3e-6, as in the paper) because CLIP is frozen and only the
new modules learn; it is a setting like every other. ``--set optim.lr=1e-4`` overrides
one key; unknown keys are refused with a suggestion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg_cli.config import CLASS_SPLITS, PRECISIONS, setting, validate
from ovseg_cli.config_io import coerce, from_mapping, load_yaml, to_dict
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.model.config import ModelConfig


@dataclass
class DataConfig:
    """Clip sampling and augmentation (gaps come from the model)."""

    crop: tuple[int, int] | None = setting(
        (480, 480), "Training crop (height, width); none: whole frames."
    )
    scale: tuple[float, float] = setting((0.5, 2.0), "Range of the random scale factor.")
    flip: bool = setting(True, "Random horizontal flip.")
    jitter: float = setting(0.2, "Photometric jitter strength (0 disables).")
    mask_input: bool = setting(
        True, "Paint unseen-class pixels with the mean colour in the inputs (IV-C)."
    )
    batch: int = setting(4, "Clips per optimizer step and process (before accumulation).")
    workers: int = setting(4, "DataLoader worker processes per training process.")


@dataclass
class OptimConfig:
    """AdamW and its schedule."""

    lr: float = setting(3e-6, "Peak learning rate (small: CLIP is frozen, the rest is new).")
    weight_decay: float = setting(1e-2, "AdamW weight decay.")
    warmup_steps: int = setting(1500, "Linear warm-up steps.")
    steps: int = setting(100_000, "Optimizer steps of the whole schedule.")
    schedule: str = setting(
        "constant", "Learning rate after warm-up.", choices=("constant", "linear", "cosine")
    )
    accumulate: int = setting(1, "Batches whose gradients are summed per optimizer step.")
    clip_grad: float = setting(1.0, "Gradient norm clipping (0 disables).")
    precision: str = setting(
        "auto", "auto (bf16 on GPUs that have it, fp16 with a scaler otherwise, fp32 on CPU).",
        choices=PRECISIONS,
    )  # fmt: skip


@dataclass
class LossConfig:
    """L = alpha CE(main) + beta CE(aux) (Eq. 15)."""

    alpha: float = setting(1.0, "Weight of the main head's cross-entropy.")
    beta: float = setting(1.0, "Weight of the auxiliary head's cross-entropy.")


@dataclass
class RunConfig:
    """Seeds, logging, validation and checkpoints."""

    seed: int = setting(0, "Seed of the model's initialisation and of the data order.")
    log_every: int = setting(10, "Steps between metrics.jsonl lines.")
    ckpt_every: int = setting(500, "Steps between last.safetensors checkpoints.")
    val_every: int = setting(2000, "Steps between validations (0: never).")
    val_split: str = setting("seen", "Classes of the validation mIoU.", choices=CLASS_SPLITS)
    val_videos: int | None = setting(None, "Validate on the first N val videos only.")
    max_steps: int | None = setting(None, "Stop after this many steps (default: optim.steps).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (torchrun sets the rank's GPU).")


@dataclass
class TrainConfig:
    """Everything a training run is, saved as RUN_DIR/config.yaml and in checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for section in (self.data, self.optim, self.loss, self.run):
            validate(section)
        for name, value in (
            ("data.batch", self.data.batch), ("optim.accumulate", self.optim.accumulate),
            ("optim.steps", self.optim.steps), ("run.log_every", self.run.log_every),
            ("run.ckpt_every", self.run.ckpt_every),
        ):  # fmt: skip
            if value < 1:
                raise OvsegError(f"{name} must be at least 1, not {value}")
        m = self.model.multiple
        if self.data.crop is not None and any(side % m for side in self.data.crop):
            raise OvsegError(f"data.crop sides must be multiples of {m} (the coarsest stride)")
        if self.optim.lr <= 0:
            raise OvsegError(f"optim.lr must be > 0, not {self.optim.lr}")
        for name, value in (
            ("optim.warmup_steps", self.optim.warmup_steps), ("data.workers", self.data.workers),
            ("optim.weight_decay", self.optim.weight_decay), ("optim.clip_grad", self.optim.clip_grad),
            ("run.val_every", self.run.val_every),
        ):  # fmt: skip
            if value < 0:
                raise OvsegError(f"{name} must be >= 0, not {value}")
        if self.run.max_steps is not None and self.run.max_steps < 1:
            raise OvsegError(f"run.max_steps must be at least 1, not {self.run.max_steps}")
        if self.run.val_videos is not None and self.run.val_videos < 1:
            raise OvsegError(f"run.val_videos must be at least 1, not {self.run.val_videos}")

    @property
    def total_steps(self) -> int:
        """Steps this run goes to."""
        return self.run.max_steps or self.optim.steps


def _set_dotted(
    tree: dict[str, Any], key: str, value: Any, cls: type, source: str = "--set"
) -> None:
    """Put ``a.b=value`` into a nested mapping, checking each part against the dataclasses
    and the value against its setting's type (so an error names ``source``, not the file)."""
    import dataclasses
    import typing

    parts = key.split(".")
    node, owner = tree, cls
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(owner)}
        name = part.replace("-", "_")
        if name not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise OvsegError(
                f"--set {key}: no setting {part!r} in {where}" + did_you_mean(name, list(fields))
            )
        if depth == len(parts) - 1:
            node[name] = coerce(value, typing.get_type_hints(owner)[name], key, source)
            return
        owner = typing.get_type_hints(owner)[name]
        if not dataclasses.is_dataclass(owner):
            raise OvsegError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node = node.setdefault(name, {})


def parse_assignments(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings to (key, YAML-parsed value) pairs."""
    import yaml

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OvsegError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def resolve_train_config(
    base: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    assignments: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """base (e.g. a run's saved config) < YAML file < --set key=value < dotted CLI overrides."""
    import copy

    tree: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if config_file is not None:
        _merge(tree, load_yaml(config_file))
    for key, value in parse_assignments(assignments):
        _set_dotted(tree, key, value, TrainConfig)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value, TrainConfig, source="command line")
    return from_mapping(TrainConfig, tree, source=str(config_file or "settings"))


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def config_differences(a: TrainConfig, b: TrainConfig, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ, as ``key: a -> b`` lines (``ignore``: keys to skip)."""
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
            return
        key = prefix[:-1]
        if key not in ignore and x != y:
            out.append(f"{key}: {x!r} -> {y!r}")

    walk(to_dict(a), to_dict(b), "")
    return out
