"""Frame-by-frame OV2VSS: a bounded state and the ``step`` that `ovseg segment --checkpoint` runs.

Each new frame is encoded once and pushed into a ring buffer holding the last
``max(gaps) + 1`` frames' features; the preceding frames at the model's gaps are read
from it (the first frame stands in for frames before the start, as the training sampler
does), and the first frame of the stream is kept as the distant frame (the most distant
frame a causal stream has; the pipeline resets the state at a shot cut, so it is the first
frame of the current shot). Memory is fixed by the gaps, not by the video's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ovseg_cli.classes import ClassSpec
from ovseg_cli.clip.dense import model_input_size, resize_rgb
from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.clip.prompts import Vocabulary, encode_vocabulary
from ovseg_cli.clip.templates import templates_named
from ovseg_cli.config_io import to_dict
from ovseg_cli.devices import autocast
from ovseg_cli.model.backbone import FrameFeatures
from ovseg_cli.model.ov2vss import OV2VSS
from ovseg_cli.runtime import runtime_info
from ovseg_cli.segment.protocol import StepsInBatches


@dataclass
class StreamState:
    """Cached features of the last frames (ring buffer) and of the distant frame."""

    capacity: int
    frames: deque[FrameFeatures] = field(default_factory=deque)
    distant: FrameFeatures | None = None
    count: int = 0

    def __post_init__(self) -> None:
        self.frames = deque(self.frames, maxlen=self.capacity)

    def reset(self) -> None:
        """Forget everything (a new video or shot): the next frame becomes the distant one."""
        self.frames.clear()
        self.distant = None
        self.count = 0

    def push(self, features: FrameFeatures) -> None:
        """Add the newest frame; the oldest falls out of the buffer."""
        features = features.detach()
        if self.frames and self.frames[-1].clip.shape != features.clip.shape:
            self.reset()  # the frame size changed mid-stream: no history to attend to
        if self.distant is None:
            self.distant = features
        self.frames.append(features)
        self.count += 1

    def past(self, gaps: Sequence[int]) -> list[FrameFeatures]:
        """Features of the frames ``gaps`` before the newest (the first frame before the start)."""
        newest = len(self.frames) - 1
        return [self.frames[newest - min(k, self.count - 1)] for k in gaps]

    @property
    def nbytes(self) -> int:
        """Memory held by the state (the distant frame is counted once)."""
        held = {id(f): f for f in [*self.frames, *([self.distant] if self.distant else [])]}
        return sum(f.nbytes for f in held.values())


class OV2VSSSegmenter(StepsInBatches):
    """The trained model behind the same interface as the training-free segmenter."""

    kind = "ov2vss"

    def __init__(
        self,
        model: OV2VSS,
        clip: ClipBundle,
        *,
        size: int | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        checkpoint: str | None = None,
        meta: dict[str, Any] | None = None,
        runtime: str = "torch",
    ) -> None:
        self.model = model.to(device).eval()
        self.clip = clip
        self.cfg = model.cfg
        self.size = size or self.cfg.size
        self.device = torch.device(device)
        self.precision = precision
        self.checkpoint = checkpoint
        self.meta = meta or {}
        self.window = None
        self.runtime = runtime  # where the frozen CLIP runs; set by load_model

    def encode_vocabulary(self, classes: Sequence[ClassSpec]) -> Vocabulary:
        """Text embeddings of the classes with the templates the model was trained with."""
        with autocast(self.device, self.precision):
            return encode_vocabulary(self.clip, classes, templates_named(self.cfg.templates))

    def input_size(self, height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
        """(h, w) the model sees: short side ~size, sides multiples of the coarsest stride."""
        return model_input_size(height, width, short_side or self.size, self.cfg.multiple)

    def prepare(self, rgb: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """Resize an (H, W, 3) uint8 frame to a (1, 3, h, w) uint8 tensor (reader thread)."""
        resized = resize_rgb(rgb, self.input_size(*rgb.shape[:2], short_side))
        return torch.from_numpy(resized).permute(2, 0, 1).unsqueeze(0)

    def memory_estimate(
        self, height: int, width: int, batch: int, classes: int, short_side: int | None = None
    ) -> int:
        """Bytes one step on ``batch`` frames of this size needs at most (see memory.py)."""
        from ovseg_cli.memory import FLOAT, vit_bytes

        h, w = self.input_size(height, width, short_side)
        visual = self.clip.visual
        p = int(visual.patch_size[0])
        heads = visual.transformer.resblocks[0].attn.num_heads
        need = vit_bytes((h // p) * (w // p) + 1, batch, visual.transformer.width, heads)
        fine = (h // min(self.cfg.strides)) * (w // min(self.cfg.strides))  # stride-8 maps
        per_class = (self.cfg.cost_dim + self.cfg.guidance_dim) * 4
        need += batch * fine * (self.cfg.dim * 8 + classes * per_class) * FLOAT
        need += max(self.cfg.gaps) * fine * self.cfg.dim * 4 * FLOAT  # the ring buffer
        return need + batch * h * w * 3 * (FLOAT + 1) * 2

    def init_state(self) -> StreamState:
        """An empty stream state."""
        return StreamState(capacity=max(self.cfg.gaps) + 1)

    @torch.no_grad()
    def step_batch(
        self, images: torch.Tensor, state: StreamState, vocabulary: Vocabulary
    ) -> tuple[list[torch.Tensor], StreamState]:
        """``step`` for consecutive frames (B, 3, h, w): one encoder pass, then decoding in order.

        A frame's features do not depend on its batch (no BatchNorm in training mode), so
        this computes what ``step`` does frame by frame.
        """
        out = []
        with autocast(self.device, self.precision):
            batch = self.model.encode_frame(images.to(self.device, non_blocking=True))
            text = vocabulary.embeddings.to(self.device)
            for i in range(images.shape[0]):
                state.push(_one_frame(batch, i))
                past = state.past(self.cfg.gaps)
                decoded = self.model.decode(past, state.frames[-1], state.distant, text)
                out.append(decoded.logits[0].float())
        return out, state

    def describe(self) -> dict[str, Any]:
        """What produced the results, for meta.json."""
        return {
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "trained_step": self.meta.get("step"),
            "trained_classes": self.meta.get("classes"),
            "clip": self.clip.arch,
            "pretrained": self.clip.pretrained,
            "weights": self.clip.weights,
            "random_weights": self.clip.random_init,
            "size": self.size,
            "model_config": to_dict(self.cfg),
            "device": str(self.device),
            "precision": self.precision,
            **runtime_info(self.runtime, self.model.encoder.clip),
        }


def _one_frame(batch: FrameFeatures, i: int) -> FrameFeatures:
    """Frame ``i`` of batched features, copied so the ring buffer does not pin the batch."""
    return FrameFeatures(
        clip=batch.clip[i : i + 1].clone(),
        pyramid=[u[i : i + 1].clone() for u in batch.pyramid],
        pooled=[d[i : i + 1].clone() for d in batch.pooled],
    )
