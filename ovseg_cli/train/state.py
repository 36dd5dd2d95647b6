"""Resumable training checkpoints: the model checkpoint plus everything a run needs to go on.

``RUN_DIR/last.safetensors`` holds the trainable weights, the optimizer's tensors and the
torch RNG states; ``last.json`` holds the model metadata (as any checkpoint) and, under
``extra.train``, the step, the position in the data, the scheduler and scaler states, the
Python and NumPy RNG states and the resolved config. Both files are written atomically, so
a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.config_io import to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.model.checkpoint import read_metadata, read_weights, save_checkpoint
from ovseg_cli.model.ov2vss import OV2VSS


@dataclass
class Progress:
    """Where training stands."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already used
    best: float | None = None  # best validation mIoU so far


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    return meta, tensors


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_training_state(
    path: Path,
    model: OV2VSS,
    clip: ClipBundle,
    *,
    config: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    progress: Progress,
    classes: list[str],
    split: dict[str, list[int]],
    world: int,
) -> None:
    """Write NAME.safetensors + NAME.json with everything --resume needs."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim/{pid}/{name}"] = torch.as_tensor(value)
    rng_meta, rng_tensors = _rng_state()
    tensors.update(rng_tensors)
    train = {
        "step": progress.step,
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "best": progress.best,
        "world": world,
        "config": to_dict(config),
        "optimizer": {"param_groups": opt["param_groups"]},
        "scheduler": scheduler.state_dict(),  # lr_lambdas are plain functions: stored as null
        "scaler": scaler.state_dict(),
        "rng": rng_meta,
    }
    try:
        save_checkpoint(
            path, model, clip, classes=classes, split=split, step=progress.step,
            extra={"train": train}, extra_tensors=tensors,
        )  # fmt: skip
    except OSError as exc:
        raise OvsegError(
            f"could not write checkpoint {path}: {exc.strerror or exc} (the previous one is intact)"
        ) from None


def training_metadata(path: Path) -> dict[str, Any]:
    """The ``extra.train`` part of a training checkpoint, or a clear error."""
    return _train_part(read_metadata(path), path)


def _train_part(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    train = meta.get("extra", {}).get("train")
    if not train:
        raise OvsegError(
            f"{path} is a model checkpoint without training state; cannot resume from it"
        )
    return train


def load_training_state(
    path: Path,
    model: OV2VSS,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> Progress:
    """Restore weights, optimizer, scheduler, scaler and RNG states; returns the progress."""
    meta = read_metadata(path)
    train = _train_part(meta, path)
    stored = read_weights(path, meta)
    weights = {k: v for k, v in stored.items() if not k.startswith("extra/")}
    tensors = {k[len("extra/") :]: v for k, v in stored.items() if k.startswith("extra/")}
    missing = set(model.trainable_state_dict()) - set(weights)
    if missing:
        raise OvsegError(f"{path} lacks {len(missing)} model tensor(s), e.g. {sorted(missing)[0]}")
    model.load_state_dict(weights, strict=False)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": train["optimizer"]["param_groups"]})
    scheduler.load_state_dict(train["scheduler"])
    if train["scaler"]:
        scaler.load_state_dict(train["scaler"])
    _set_rng_state(train["rng"], tensors)
    return Progress(train["step"], train["epoch"], train["batch_in_epoch"], train["best"])
