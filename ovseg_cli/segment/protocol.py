"""What a segmenter is, and ``load_model``, which builds one from the settings.

A segmenter turns prepared frames into class scores, one step at a time, carrying a state
it does not own: ``step(image, state, vocabulary) -> (logits, state)``. The stream
(``ovseg_cli.segment.stream``) runs any segmenter the same way; two satisfy the interface
structurally: the training-free one (``ovseg_cli.segment.training_free``) and the trained
OV2VSS model (``ovseg_cli.model.streaming``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import from_mapping, to_dict

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ovseg_cli.classes import ClassSpec
    from ovseg_cli.clip.loading import ClipBundle
    from ovseg_cli.clip.prompts import Vocabulary

DEFAULT_CLIP = "ViT-B-16"  # the paper's text encoder
DEFAULT_PRETRAINED = "openai"


@runtime_checkable
class StreamState(Protocol):
    """What a stream carries between frames; its size is fixed by the settings."""

    def reset(self) -> None:
        """Start afresh (a new video or a new shot)."""
        ...

    @property
    def nbytes(self) -> int:
        """Memory held by the state."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Frames in, class scores out, one step at a time, with the state passed in and out."""

    kind: str  # "training-free" or "ov2vss", for meta.json
    device: torch.device
    clip: ClipBundle

    def encode_vocabulary(self, classes: Sequence[ClassSpec]) -> Vocabulary:
        """Text embeddings of the classes (once per run): where text meets the image."""
        ...

    def input_size(self, height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
        """The (h, w) a frame of this size is resized to."""
        ...

    def prepare(self, rgb: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """An (H, W, 3) uint8 frame as the model's (1, 3, h, w) input; safe in a reader thread."""
        ...

    def init_state(self) -> StreamState:
        """A fresh, empty state."""
        ...

    def step(
        self, image: torch.Tensor, state: Any, vocabulary: Vocabulary
    ) -> tuple[torch.Tensor, Any]:
        """Class logits (N, gh, gw) of one prepared frame, and the updated state."""
        ...

    def step_batch(
        self, images: torch.Tensor, state: Any, vocabulary: Vocabulary
    ) -> tuple[list[torch.Tensor], Any]:
        """``step`` for consecutive frames (B, 3, h, w), as the frames one by one would."""
        ...

    def memory_estimate(
        self, height: int, width: int, batch: int, classes: int, short_side: int | None = None
    ) -> int:
        """Bytes one step on ``batch`` frames of this size needs at most."""
        ...

    def describe(self) -> dict[str, Any]:
        """What produces the results, for meta.json and report.json."""
        ...


class StepsInBatches:
    """``step`` as a batch of one, for segmenters that implement ``step_batch``."""

    def step(self, image: torch.Tensor, state: Any, vocabulary: Vocabulary) -> tuple[Any, Any]:
        """Class logits of one prepared frame (1, 3, h, w), and the updated state."""
        logits, state = self.step_batch(image, state, vocabulary)  # type: ignore[attr-defined]
        return logits[0], state


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
