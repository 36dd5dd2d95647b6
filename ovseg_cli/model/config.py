"""Settings of the OV2VSS model, saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from ovseg_cli.clip.methods import DENSE_METHOD_NAMES
from ovseg_cli.config import TEMPLATES, setting, validate
from ovseg_cli.errors import OvsegError


@dataclass
class ModelConfig:
    """Shape of an OV2VSS model; everything needed to rebuild it from a checkpoint."""

    clip: str = setting(
        "ViT-B-16", "Frozen CLIP (open_clip name): text encoder and dense features."
    )
    pretrained: str = setting("openai", "CLIP weights the model is trained on (tag or file).")
    dense_method: str = setting(
        "clearclip",
        "Training-free last-block change for CLIP's dense features.",
        choices=DENSE_METHOD_NAMES,
    )
    backbone: str = setting(
        "clip",
        "Source of the multi-scale features U^l: 'clip' (the frozen CLIP's intermediate layers "
        "as a feature pyramid) or a timm model name such as resnet101.",
    )
    backbone_pretrained: bool = setting(True, "Load a timm backbone's ImageNet weights.")
    freeze_backbone: bool = setting(False, "Keep a timm backbone frozen (CLIP always is).")
    clip_layers: tuple[int, ...] | None = setting(
        None, "CLIP blocks tapped for the pyramid (default: evenly spaced, one per level)."
    )
    strides: tuple[int, ...] = setting(
        (8, 16, 32), "Strides of the pyramid levels, fine to coarse."
    )
    dim: int = setting(128, "Channels of the pyramid features and the fusion modules.")
    pool_sizes: tuple[int, ...] = setting(
        (1, 3, 6, 8), "P2T pyramid pooling output sizes (Eq. 2); their squares sum to N tokens."
    )
    gap: int = setting(3, "Frames between consecutive inputs (t-9, t-6, t-3, t for 3).")
    num_past: int = setting(3, "Preceding frames fused into the target frame.")
    regions: int = setting(16, "Soft object regions of the random frame (OCR, Eq. 9).")
    text_heads: int = setting(8, "Heads of the text-to-video attention (Eq. 11).")
    cost_dim: int = setting(32, "Channels of each class's cost-volume embedding (Eq. 12-13).")
    guidance_dim: int = setting(
        32, "Channels of the visual guidance given to each class (Eq. 13-14)."
    )
    templates: str = setting("vild", "Prompt-template ensemble.", choices=TEMPLATES)
    size: int = setting(448, "Short side the model sees at inference (multiple of 32).")

    def __post_init__(self) -> None:
        if self.dense_method == "maskclip":
            # checkpoints trained before the rename: their features are the value-only ones
            self.dense_method = "value"
        validate(self)
        self.strides = tuple(int(s) for s in self.strides)
        self.pool_sizes = tuple(int(s) for s in self.pool_sizes)
        if self.clip_layers is not None:
            self.clip_layers = tuple(int(i) for i in self.clip_layers)
            if len(self.clip_layers) != len(self.strides):
                raise OvsegError("clip_layers needs one layer per pyramid stride")
        if list(self.strides) != sorted(set(self.strides)) or self.strides[0] < 4:
            raise OvsegError(f"strides must increase and start at 4 or more, not {self.strides}")
        if self.gap < 1 or self.num_past < 1:
            raise OvsegError("gap and num_past must be at least 1")
        if self.size % self.multiple:
            raise OvsegError(f"size must be a multiple of {self.multiple}, not {self.size}")

    @property
    def gaps(self) -> tuple[int, ...]:
        """Distances of the preceding frames from t, farthest first: (9, 6, 3) by default."""
        return tuple(self.gap * k for k in range(self.num_past, 0, -1))

    @property
    def pooled_tokens(self) -> int:
        """N: tokens per frame and level after P2T pooling."""
        return sum(s * s for s in self.pool_sizes)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (the coarsest stride)."""
        return max(self.strides)
