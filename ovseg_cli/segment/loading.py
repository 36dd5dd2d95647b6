"""``load_model``: the segmenter the settings ask for, the trained OV2VSS model when a
checkpoint is given, else the training-free one (see ``ovseg_cli.segment.protocol``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import from_mapping, to_dict
from ovseg_cli.segment.protocol import DEFAULT_CLIP, DEFAULT_PRETRAINED, Segmenter

if TYPE_CHECKING:
    import torch


def load_model(config: SegmentConfig | None = None, **overrides: Any) -> Segmenter:
    """Load CLIP and build the segmenter from a config: the trained OV2VSS model when
    ``checkpoint`` is set, else the training-free one (defaults: ViT-B-16, OpenAI weights)."""
    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.devices import resolve_device, resolve_precision
    from ovseg_cli.runtime import resolve_runtime
    from ovseg_cli.segment.temporal_fusion import TemporalFusion
    from ovseg_cli.segment.training_free import TrainingFreeSegmenter

    cfg = config or SegmentConfig()
    if overrides:
        cfg = from_mapping(SegmentConfig, {**to_dict(cfg), **overrides}, source="load_model")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    resolve_runtime(cfg.runtime, device, precision)  # fail before loading CLIP
    if cfg.checkpoint:
        return _load_trained(cfg, device, precision)
    clip = load_clip(
        cfg.clip or DEFAULT_CLIP, cfg.pretrained or DEFAULT_PRETRAINED, device=str(device)
    )
    fusion = TemporalFusion.from_config(cfg) if cfg.temporal and cfg.temporal_strength else None
    return TrainingFreeSegmenter(
        clip, dense_method=cfg.dense_method, size=cfg.size, window=cfg.window, stride=cfg.stride,
        refine=cfg.refine, fusion=fusion, templates=cfg.templates, device=device,
        precision=precision, runtime=cfg.runtime,
    )  # fmt: skip


def _load_trained(cfg: SegmentConfig, device: torch.device, precision: str) -> Segmenter:
    from ovseg_cli.errors import OvsegError
    from ovseg_cli.model.checkpoint import load_checkpoint
    from ovseg_cli.model.streaming import OV2VSSSegmenter
    from ovseg_cli.runtime import place_encoder

    given = [f"--{n}" for n in ("window", "stride") if getattr(cfg, n) is not None]
    given += ["--refine"] if cfg.refine != "none" else []
    if given:
        raise OvsegError(
            f"{', '.join(given)} apply to the training-free segmenter, not a checkpoint"
        )
    model, clip, meta = load_checkpoint(
        cfg.checkpoint, clip_arch=cfg.clip, pretrained=cfg.pretrained, device=str(device)
    )
    if cfg.size is not None and cfg.size % model.cfg.multiple:
        raise OvsegError(f"--size must be a multiple of {model.cfg.multiple} for this checkpoint")
    # the frozen CLIP and the blocks the pyramid reads move; the trainable rest stays in torch
    frames = model.encoder
    frames.clip, runtime = place_encoder(
        frames.clip, clip.arch, cfg.runtime, device, precision, layers=frames.layers
    )
    return OV2VSSSegmenter(
        model, clip, size=cfg.size, device=device, precision=precision,
        checkpoint=str(cfg.checkpoint), meta=meta, runtime=runtime,
    )  # fmt: skip
