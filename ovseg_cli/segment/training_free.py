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
from ovseg_cli.clip.dense import DenseClipEncoder, model_input_size, to_model_input
from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.clip.prompts import Vocabulary, encode_vocabulary
from ovseg_cli.clip.templates import templates_named
from ovseg_cli.devices import autocast
from ovseg_cli.segment.protocol import StepsInBatches
from ovseg_cli.segment.temporal_fusion import TemporalFusion, TemporalState


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


class TrainingFreeSegmenter(StepsInBatches):
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
    ) -> None:
        self.clip = clip
        self.device = torch.device(device)
        self.precision = precision
        self.encoder = DenseClipEncoder(clip.visual, dense_method).to(self.device)
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

    def memory_estimate(
        self, height: int, width: int, batch: int, classes: int, short_side: int | None = None
    ) -> int:
        """Bytes one step on ``batch`` frames of this size needs at most (see memory.py)."""
        from ovseg_cli.clip.dense import _starts
        from ovseg_cli.memory import FLOAT, fusion_bytes, vit_bytes

        h, w = self.input_size(height, width, short_side)
        p = self.encoder.patch
        visual = self.clip.visual
        heads = visual.transformer.resblocks[0].attn.num_heads
        images, tokens = batch, (h // p) * (w // p) + 1
        if self.window is not None and max(h, w) > self.window:
            win = max(p, self.window // p * p)
            stride = max(p, round(win * 2 / 3 / p) * p)
            images *= len(_starts(h, win, stride)) * len(_starts(w, win, stride))
            tokens = (min(h, win) // p) * (min(w, win) // p) + 1
        need = vit_bytes(tokens, images, visual.transformer.width, heads)
        need += batch * h * w * 3 * (FLOAT + 1) * 2  # resized frames, uint8 and float
        patches, dim = (h // p) * (w // p), visual.output_dim
        need += batch * patches * (dim + classes) * FLOAT * 2  # embeddings, logits
        if self.fusion is not None:
            need += fusion_bytes(patches, self.fusion.history, dim)
        return need

    def init_state(self) -> SegmentState:
        """A fresh, empty stream state."""
        return SegmentState(temporal=self.fusion.init_state() if self.fusion else None)

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
            "activation": self.clip.activation,
            "dense_method": self.encoder.method,
            "size": self.size,
            "window": self.window,
            "templates": self.templates,
            "temporal_fusion": fusion,
            "device": str(self.device),
            "precision": self.precision,
        }
