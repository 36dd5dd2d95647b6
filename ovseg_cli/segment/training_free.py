"""The training-free segmenter: dense CLIP + temporal fusion + text matching, one frame at a time.

The model is stateless: ``step(image, state, vocabulary) -> (logits, state)``; everything
that carries over from frame to frame lives in ``SegmentState``, whose size is fixed by
the settings, not by the length of the video.

Per frame: the dense method's patch embeddings (``ovseg_cli.clip.dense``), over the whole
frame or over the references' sliding windows (``ovseg_cli.clip.sliding``); temporal fusion
of each window's embeddings with that window's own history (the windows sit at the same
place in every frame); cosine similarity with the class embeddings; with windows, the
windows' logits upsampled and averaged as the references do; optionally PAMR
(``ovseg_cli.clip.pamr``) on the scores at the model's input resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovseg_cli.classes import ClassSpec
from ovseg_cli.clip.dense import DenseClipEncoder, model_input_size, normalise_images, uint8_input
from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.clip.pamr import pamr
from ovseg_cli.clip.prompts import Vocabulary, encode_vocabulary
from ovseg_cli.clip.sliding import merge_window_logits, window_boxes, window_embeddings
from ovseg_cli.clip.templates import templates_named
from ovseg_cli.config import REFINEMENTS, SegmentConfig, default_of
from ovseg_cli.devices import autocast
from ovseg_cli.runtime import place_encoder, runtime_info
from ovseg_cli.segment.protocol import StepsInBatches
from ovseg_cli.segment.temporal_fusion import TemporalFusion, TemporalState

# Default short side: 1.5 times the CLIP's native one (336 for ViT-B-16). On CamVid the best
# mIoU any method can reach from patch-level scores rises from 67.1 (224) to 74.3 (336) and
# 78.6 (448) while the cost per frame roughly doubles per step (benchmarks/bench_resolution.py)
DEFAULT_SIZE_SCALE = 1.5


def default_size(native: int, patch: int) -> int:
    """The default short side for a CLIP of this native size: a multiple of the patch."""
    return max(patch, round(native * DEFAULT_SIZE_SCALE / patch) * patch)


@dataclass
class SegmentState:
    """What a stream carries between frames: one bounded temporal history per window."""

    fusion: TemporalFusion | None
    temporal: list[TemporalState] = field(default_factory=list)  # one per window (or one)
    frames: int = 0

    def reset(self) -> None:
        """Start afresh (a new video or a new shot)."""
        self.temporal = []
        self.frames = 0

    def histories(self, windows: int) -> list[TemporalState]:
        """The histories of ``windows`` windows (new ones when the window layout changed)."""
        if self.fusion is not None and len(self.temporal) != windows:
            self.temporal = [self.fusion.init_state() for _ in range(windows)]
        return self.temporal

    @property
    def nbytes(self) -> int:
        """Memory held by the state."""
        return sum(t.nbytes for t in self.temporal)


class TrainingFreeSegmenter(StepsInBatches):
    """Open-vocabulary segmentation from a frozen CLIP with no trained weights of its own."""

    kind = "training-free"

    def __init__(
        self,
        clip: ClipBundle,
        *,
        dense_method: str = default_of(SegmentConfig, "dense_method"),
        size: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        refine: str = "none",
        fusion: TemporalFusion | None = None,
        templates: str = default_of(SegmentConfig, "templates"),
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        runtime: str = "torch",
    ) -> None:
        self.clip = clip
        self.device = torch.device(device)
        self.precision = precision
        self.encoder = DenseClipEncoder(clip.visual, dense_method).to(self.device)
        # where the frozen image tower runs (ONNX Runtime on CPUs); the rest stays in torch
        self.encoder, self.runtime = place_encoder(
            self.encoder, clip.arch, runtime, self.device, precision
        )
        self.size = size or default_size(clip.native_size, self.encoder.patch)
        p = self.encoder.patch
        self.window = None if window is None else max(p, window // p * p)
        self.stride = None if window is None else max(p, (stride or self.window // 2) // p * p)
        if refine not in REFINEMENTS:
            raise ValueError(f"unknown refinement {refine!r}")
        self.refine = refine
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
        """Resize an (H, W, 3) uint8 frame to a (1, 3, h, w) uint8 tensor (reader threads);
        ``step_batch`` normalises it on the model's device."""
        return uint8_input(rgb, self.input_size(*rgb.shape[:2], short_side))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared images on the model's device as the CLIP's input: uint8 ones normalised
        there; floating ones are taken as normalised already."""
        images = images.to(self.device, non_blocking=True)
        if images.is_floating_point():
            return images
        return normalise_images(images, self.clip.mean, self.clip.std)

    def boxes(self, h: int, w: int) -> list[tuple[int, int, int, int]] | None:
        """The sliding windows of an (h, w) input, or None for one whole-frame pass."""
        if self.window is None or (h <= self.window and w <= self.window):
            return None
        return window_boxes(h, w, self.window, self.stride)

    def memory_estimate(
        self, height: int, width: int, batch: int, classes: int, short_side: int | None = None
    ) -> int:
        """Bytes one step on ``batch`` frames of this size needs at most (see memory.py)."""
        from ovseg_cli.memory import FLOAT, fusion_bytes, vit_bytes

        h, w = self.input_size(height, width, short_side)
        p = self.encoder.patch
        visual = self.clip.visual
        heads = visual.transformer.resblocks[0].attn.num_heads
        boxes = self.boxes(h, w)
        windows, wh, ww = (1, h, w) if boxes is None else (len(boxes), self.window, self.window)
        wh, ww = min(wh, h), min(ww, w)
        patches, dim = (wh // p) * (ww // p), visual.output_dim
        need = vit_bytes(patches + 1, batch * windows, visual.transformer.width, heads)
        need += batch * h * w * 3 * (FLOAT + 1) * 2  # resized frames, uint8 and float
        need += batch * windows * patches * (dim + classes) * FLOAT * 2  # embeddings, logits
        if boxes is not None or self.refine != "none":
            need += batch * classes * h * w * FLOAT * 3  # pixel logits, canvas, refinement
        if self.fusion is not None:
            need += windows * fusion_bytes(patches, self.fusion.history, dim)
        return need

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Dense embeddings (W, B, E, gh, gw) of prepared images: one per window (W = 1 whole)."""
        return self._embed(self.normalise(images))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        boxes = self.boxes(*images.shape[-2:])
        with autocast(self.device, self.precision):
            if boxes is None:
                return self.encoder(images).embeddings[None].float()
            return window_embeddings(self.encoder, images, boxes).float()

    def init_state(self) -> SegmentState:
        """A fresh, empty stream state."""
        return SegmentState(fusion=self.fusion)

    @torch.no_grad()
    def step_batch(
        self, images: torch.Tensor, state: SegmentState, vocabulary: Vocabulary
    ) -> tuple[list[torch.Tensor], SegmentState]:
        """``step`` for consecutive frames (B, 3, h, w): one encoder pass, then fusion in order.

        Logits are (N, gh, gw) per patch for one whole-frame pass, and (N, h, w) per input
        pixel with windows or a refinement (what the references produce before their final
        resize to the image).
        """
        images = self.normalise(images)
        h, w = images.shape[-2:]
        boxes = self.boxes(h, w)
        emb = self._embed(images)
        text = vocabulary.embeddings.to(emb.device, torch.float32)
        out = []
        for i in range(images.shape[0]):  # the temporal state must see the frames one by one
            feats = emb[:, i]
            if self.fusion is not None:
                histories = state.histories(len(feats))
                fused = [self.fusion(f, hist) for f, hist in zip(feats, histories, strict=True)]
                feats = torch.stack([f for f, _ in fused])
                state.temporal = [s for _, s in fused]
            if boxes is None:
                logits = torch.einsum("ne,ehw->nhw", text, feats[0])
            else:  # Eq. of the references' forward_slide: upsampled window logits averaged
                logits = merge_window_logits(feats[:, None], text, boxes, (h, w))[0]
            logits = self.logit_scale * logits
            if self.refine == "pamr":
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits[None], (h, w), mode="bilinear")[0]
                logits = pamr(images[i : i + 1].float(), logits[None])[0]
            out.append(logits)
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
            "stride": self.stride,
            "refine": self.refine,
            "templates": self.templates,
            "temporal_fusion": fusion,
            "device": str(self.device),
            "precision": self.precision,
            **runtime_info(self.runtime, self.encoder),
        }
