"""OV2VSS checkpoints: ``NAME.safetensors`` (trainable weights) plus ``NAME.json`` (metadata).

The JSON names everything needed to rebuild the model: its config, the CLIP (architecture,
weights tag and a fingerprint of the weights), the training classes and split, the prompt
templates, the project version and the training step. CLIP weights are referenced, never
copied. Nothing is unpickled: tensors come from safetensors, metadata from JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ovseg_cli import __version__
from ovseg_cli.clip.loading import ClipBundle, load_clip
from ovseg_cli.clip.templates import templates_named
from ovseg_cli.config_io import from_mapping, to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.model.checkpoint_io import has_backup, resolve_weights, write_pair
from ovseg_cli.model.config import ModelConfig
from ovseg_cli.model.ov2vss import OV2VSS

FORMAT = "ovseg-ov2vss"
FORMAT_VERSION = 1
_MAX_JSON = 16 * 1024 * 1024


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    p = Path(path).expanduser()
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def clip_fingerprint(clip: ClipBundle) -> str:
    """A short hash of the CLIP weights, to catch a checkpoint used with other weights."""
    state = clip.model.state_dict()
    h = hashlib.sha256()
    for key in ("visual.proj", "visual.class_embedding", "text_projection", "logit_scale"):
        if key in state:
            h.update(key.encode())
            h.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: OV2VSS,
    clip: ClipBundle,
    *,
    classes: list[str],
    split: dict[str, list[int]] | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    """Write the trainable weights and metadata atomically; returns both paths."""
    from safetensors.torch import save_file

    weights, meta_path = checkpoint_paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra/{k}"] = v.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ovseg_version": __version__,
        "model_config": to_dict(model.cfg),
        "clip": {
            "arch": clip.arch,
            "pretrained": clip.pretrained,
            "fingerprint": clip_fingerprint(clip),
            "activation": clip.activation,  # the weights alone do not say it
        },
        "classes": list(classes),
        "split": split,
        "templates": list(templates_named(model.cfg.templates)),
        "step": int(step),
        "weights": weights.name,
        "extra": extra or {},
    }
    write_pair(
        weights, meta_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}), meta
    )
    return weights, meta_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated JSON metadata of a checkpoint, with one-line errors."""
    weights, meta_path = checkpoint_paths(path)
    for p in (meta_path, weights):
        if not p.is_file() and not (p == weights and has_backup(weights, meta_path)):
            raise OvsegError(
                f"checkpoint file not found: {p} (a checkpoint is NAME.safetensors + NAME.json)"
            )
    if meta_path.stat().st_size > _MAX_JSON:
        raise OvsegError(f"{meta_path} is too large to be checkpoint metadata")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OvsegError(
            f"{meta_path} is not valid checkpoint metadata ({exc.__class__.__name__})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise OvsegError(
            f"{meta_path} is not an OV2VSS checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise OvsegError(
            f"{meta_path} was written by a newer ovseg ({meta.get('ovseg_version')}); upgrade ovseg"
        )
    for key in ("model_config", "clip", "classes"):
        if key not in meta:
            raise OvsegError(f"{meta_path} lacks {key!r}: not a complete OV2VSS checkpoint")
    return meta


def read_weights(path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint's safetensors file (the one ``meta`` names by digest)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = checkpoint_paths(path)
    if meta is not None:
        weights = resolve_weights(weights, meta_path, meta)
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise OvsegError(f"{weights} is truncated or not a safetensors file ({reason})") from None


def _differences(model: OV2VSS, tensors: dict[str, torch.Tensor]) -> str:
    expected = {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("extra/")}
    parts = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing:
        parts.append(f"missing {len(missing)} tensor(s) such as {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) such as {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape(s) differ, e.g. {k}: {found[k]} vs {expected[k]}")
    return "; ".join(parts)


def load_checkpoint(
    path: str | Path,
    *,
    clip: ClipBundle | None = None,
    clip_arch: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
) -> tuple[OV2VSS, ClipBundle, dict[str, Any]]:
    """Rebuild a model from a checkpoint, checking it against the CLIP it names.

    ``clip_arch`` must match the checkpoint's if given; ``pretrained`` may point the
    same weights to another place (a local file offline); they are checked by fingerprint.
    """
    meta = read_metadata(path)
    weights_path, _ = checkpoint_paths(path)
    cfg = from_mapping(ModelConfig, meta["model_config"], source=str(weights_path))
    trained_arch, trained_weights = meta["clip"].get("arch"), meta["clip"].get("pretrained")
    if clip_arch is not None and clip_arch != trained_arch:
        raise OvsegError(
            f"{weights_path.name} was trained with CLIP {trained_arch}, not {clip_arch}"
        )
    if clip is None:
        clip = load_clip(trained_arch, pretrained or trained_weights, device=device)
    elif clip.arch != trained_arch:
        raise OvsegError(
            f"{weights_path.name} was trained with CLIP {trained_arch}, not {clip.arch}"
        )
    if meta["clip"].get("fingerprint") not in (None, clip_fingerprint(clip)):
        raise OvsegError(
            f"{weights_path.name} was trained on other CLIP weights ({trained_arch}/{trained_weights}) "
            f"than the ones loaded ({clip.weights}); pass --pretrained with the weights it names"
        )
    trained_activation = meta["clip"].get("activation")
    if trained_activation not in (None, clip.activation):
        raise OvsegError(
            f"{weights_path.name} was trained on CLIP with {trained_activation} activations, "
            f"but the weights loaded now build {clip.activation}; pass --clip "
            f"{trained_arch}-quickgelu or the weights file it was trained with"
        )
    model = OV2VSS(cfg, clip)
    tensors = read_weights(path, meta)
    diff = _differences(model, tensors)
    if diff:
        raise OvsegError(
            f"{weights_path.name} does not match the model its metadata describes: {diff}"
        )
    model.load_state_dict(
        {k: v for k, v in tensors.items() if not k.startswith("extra/")}, strict=False
    )
    clip.model.to(device)  # the text tower too, not only the image encoder the model holds
    return model.to(device).eval(), clip, meta
