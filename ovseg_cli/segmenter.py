"""The training-free segmenter: dense CLIP + temporal fusion + text matching, one frame at a time.

The model is stateless: ``step(image, state, vocabulary) -> (logits, state)``; everything
that carries over from frame to frame lives in ``SegmentState``, whose size is fixed by
the settings, not by the length of the video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovseg_cli.classes import ClassSpec
from ovseg_cli.clip_loading import ClipBundle, load_clip
from ovseg_cli.config import SegmentConfig
from ovseg_cli.dense_clip import DenseClipEncoder, model_input_size, to_model_input
from ovseg_cli.devices import autocast, resolve_device, resolve_precision
from ovseg_cli.prompts import Vocabulary, encode_vocabulary, templates_named
from ovseg_cli.runtime import place_encoder, resolve_runtime, runtime_info
from ovseg_cli.temporal_fusion import TemporalFusion, TemporalState


@dataclass
class SegmentState:
    """What a stream carries between frames: the temporal history, bounded."""

    temporal: TemporalState | None
    frames: int = 0

    def reset(self) -> None:
        """Start afresh (a new video or a new shot)."""
        if self.temporal is not None:
            self.temporal.reset()
        self.frames = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the state."""
        return self.temporal.nbytes if self.temporal is not None else 0


class TrainingFreeSegmenter:
    """Open-vocabulary segmentation from a frozen CLIP with no trained weights of its own."""

    kind = "training-free"

    def __init__(
        self,
        clip: ClipBundle,
        *,
        dense_method: str = "clearclip",
        size: int | None = None,
        window: int | None = None,
        fusion: TemporalFusion | None = None,
        templates: str = "vild",
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        runtime: str = "torch",
    ) -> None:
        self.clip = clip
        self.device = torch.device(device)
        self.precision = precision
        self.encoder = DenseClipEncoder(clip.visual, dense_method).to(self.device)
        self.encoder, self.runtime = place_encoder(
            self.encoder, clip.arch, runtime, self.device, precision
        )
        self.size = size or clip.native_size
        self.window = window
        self.fusion = fusion
        self.templates = templates
        self.logit_scale = float(clip.model.logit_scale.exp().clamp(max=100).item())

    def encode_vocabulary(self, classes: Sequence[ClassSpec]) -> Vocabulary:
        """Text embeddings of the classes (once per run)."""
        with autocast(self.device, self.precision):
            return encode_vocabulary(self.clip, classes, templates_named(self.templates))

    def input_size(self, height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
        """The (h, w) a frame of this size is resized to (short side ``size`` by default)."""
        return model_input_size(height, width, short_side or self.size, self.encoder.patch)

    def prepare(self, rgb: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """Resize and normalise an (H, W, 3) uint8 frame; safe to call from a reader thread."""
        size = self.input_size(*rgb.shape[:2], short_side)
        return to_model_input(rgb, size, self.clip.mean, self.clip.std)

    def init_state(self) -> SegmentState:
        """A fresh, empty stream state."""
        return SegmentState(temporal=self.fusion.init_state() if self.fusion else None)

    @torch.no_grad()
    def step(
        self, image: torch.Tensor, state: SegmentState, vocabulary: Vocabulary
    ) -> tuple[torch.Tensor, SegmentState]:
        """Class logits (N, gh, gw) of one prepared frame (1, 3, h, w), and the updated state."""
        logits, state = self.step_batch(image, state, vocabulary)
        return logits[0], state

    @torch.no_grad()
    def step_batch(
        self, images: torch.Tensor, state: SegmentState, vocabulary: Vocabulary
    ) -> tuple[list[torch.Tensor], SegmentState]:
        """``step`` for consecutive frames (B, 3, h, w): one encoder pass, then fusion in order."""
        with autocast(self.device, self.precision):
            batch = self.encoder.encode(images.to(self.device, non_blocking=True), self.window)
        text = vocabulary.embeddings.to(batch.device, torch.float32)
        out = []
        for feats in batch.float():  # the temporal state must see the frames one by one
            if self.fusion is not None and state.temporal is not None:
                feats, state.temporal = self.fusion(feats, state.temporal)
            out.append(self.logit_scale * torch.einsum("ne,ehw->nhw", text, feats))
            state.frames += 1
        return out, state

    def describe(self) -> dict[str, Any]:
        """What produced the results, for meta.json."""
        fusion = None
        if self.fusion is not None:
            f = self.fusion
            fusion = {
                "strength": f.strength, "history": f.history, "radius": f.radius,
                "temperature": f.temperature, "scene_cut": f.scene_cut,
            }  # fmt: skip
        return {
            "kind": self.kind,
            "clip": self.clip.arch,
            "pretrained": self.clip.pretrained,
            "weights": self.clip.weights,
            "random_weights": self.clip.random_init,
            "dense_method": self.encoder.method,
            "size": self.size,
            "window": self.window,
            "templates": self.templates,
            "temporal_fusion": fusion,
            "device": str(self.device),
            "precision": self.precision,
            **runtime_info(self.runtime, self.encoder),
        }


DEFAULT_CLIP = "ViT-B-16"  # the paper's text encoder
DEFAULT_PRETRAINED = "openai"


def load_model(config: SegmentConfig | None = None, **overrides: Any) -> Any:
    """Load CLIP and build the segmenter from a config: the trained OV2VSS model when
    ``checkpoint`` is set, else the training-free one (defaults: ViT-B-16, OpenAI weights)."""
    from ovseg_cli.config import from_mapping, to_dict

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
    fusion = None
    if cfg.temporal and cfg.temporal_strength > 0:
        fusion = TemporalFusion(
            strength=cfg.temporal_strength,
            history=cfg.temporal_history,
            radius=cfg.temporal_radius,
            scene_cut=cfg.scene_cut,
        )
    return TrainingFreeSegmenter(
        clip,
        dense_method=cfg.dense_method,
        size=cfg.size,
        window=cfg.window,
        fusion=fusion,
        templates=cfg.templates,
        device=device,
        precision=precision,
        runtime=cfg.runtime,
    )


def _load_trained(cfg: SegmentConfig, device: torch.device, precision: str) -> Any:
    from ovseg_cli.errors import OvsegError
    from ovseg_cli.model.checkpoint import load_checkpoint
    from ovseg_cli.model.streaming import OV2VSSSegmenter

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
        model,
        clip,
        size=cfg.size,
        device=device,
        precision=precision,
        checkpoint=str(cfg.checkpoint),
        meta=meta,
        runtime=runtime,
    )
