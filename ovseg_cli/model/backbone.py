"""Frame features (Sec. III): the frozen CLIP's dense embeddings and multi-scale features U^l.

Each frame passes through the frozen CLIP image encoder once. Its dense last-block
embeddings F^V feed the cost volume (III-C); by default its intermediate layers also
become the feature pyramid U^l, so one image encoder serves both roles. A timm backbone
(``resnet101``, as in the paper's Table I) can supply U^l instead. The official OV2VSS code
used a SAM ViT-B encoder; this is a documented deviation.

Only GroupNorm/LayerNorm are used in trainable parts, and a timm backbone keeps its
BatchNorm in eval mode, so a frame's features never depend on the rest of its batch:
streaming computes exactly what training computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.clip.dense import DenseClipEncoder
from ovseg_cli.clip.dense_methods import POS_SIZE
from ovseg_cli.errors import OvsegError
from ovseg_cli.model.config import ModelConfig


@dataclass
class FrameFeatures:
    """Everything the model keeps of one frame; computed once per frame, reused by later ones."""

    clip: torch.Tensor  # F^V: (B, E, h, w) normalised dense CLIP embeddings
    pyramid: list[torch.Tensor]  # U^l: (B, C, H/s_l, W/s_l), fine to coarse
    pooled: list[torch.Tensor]  # D^l = f(U^l): (B, N, C), Eq. 2

    def detach(self) -> FrameFeatures:
        """The same features cut from the autograd graph (for caching)."""
        return FrameFeatures(
            self.clip.detach(),
            [u.detach() for u in self.pyramid],
            [d.detach() for d in self.pooled],
        )

    @property
    def nbytes(self) -> int:
        """Memory held by these features."""
        tensors = [self.clip, *self.pyramid, *self.pooled]
        return sum(t.numel() * t.element_size() for t in tensors)


def default_clip_layers(depth: int, levels: int) -> tuple[int, ...]:
    """Evenly spaced CLIP blocks, one per level, never the (dense-modified) last one."""
    return tuple(min(depth - 2, max(0, round(depth * (k + 1) / levels) - 1)) for k in range(levels))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 4 channels a group, so even a 1x1 map normalises."""
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels)


class ClipFeaturePyramid(nn.Module):
    """Turns tokens of CLIP blocks (stride = patch) into maps at the pyramid's strides."""

    def __init__(self, width: int, dim: int, patch: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.patch = patch
        self.strides = strides
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, dim, 1), group_norm(dim), nn.GELU()) for _ in strides
        )
        self.refine = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), group_norm(dim)) for _ in strides
        )

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        """One map per stride from one tapped token map per stride."""
        out = []
        for tokens, stride, reduce, refine in zip(
            taps, self.strides, self.reduce, self.refine, strict=True
        ):
            x = reduce(tokens)
            target = (size[0] // stride, size[1] // stride)
            if stride < self.patch:
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            elif stride > self.patch:
                x = F.adaptive_avg_pool2d(x, target)
            out.append(refine(x))
        return out


class TimmFeaturePyramid(nn.Module):
    """A timm backbone (features_only) projected to the pyramid's channels."""

    def __init__(
        self, name: str, dim: int, strides: tuple[int, ...], pretrained: bool, frozen: bool
    ):
        super().__init__()
        import timm

        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except Exception as exc:  # timm raises RuntimeError or others for unknown names
            raise OvsegError(
                f"unknown backbone {name!r}: {str(exc).splitlines()[0][:120]}"
            ) from None
        reductions = probe.feature_info.reduction()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise OvsegError(f"backbone {name} has no features at stride(s) {missing}")
        indices = tuple(reductions.index(s) for s in strides)
        try:
            self.net = timm.create_model(
                name, pretrained=pretrained, features_only=True, out_indices=indices
            )
        except Exception as exc:
            raise OvsegError(
                f"could not load the {name} backbone weights ({str(exc).splitlines()[0][:120]}); "
                "on a machine without internet set backbone_pretrained: false"
            ) from None
        cfg = timm.data.resolve_data_config({}, model=self.net)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.frozen = frozen
        if frozen:
            self.net.requires_grad_(False)
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), group_norm(dim))
            for c in self.net.feature_info.channels()
        )

    def train(self, mode: bool = True) -> TimmFeaturePyramid:
        """BatchNorm stays in eval mode: small video batches, and batch-independent features."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images01: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid maps from images scaled to [0, 1]."""
        x = (images01 - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = self.net(x)
        return [p(f) for p, f in zip(self.project, feats, strict=True)]


class FrameEncoder(nn.Module):
    """Frozen CLIP plus the pyramid: uint8 frames in, dense CLIP features and U^l out."""

    def __init__(self, cfg: ModelConfig, clip_visual: nn.Module, mean, std) -> None:
        super().__init__()
        # size-based positional-embedding resize: what checkpoints were trained with
        self.clip = DenseClipEncoder(clip_visual, cfg.dense_method, pos_resize=POS_SIZE)
        self.clip.requires_grad_(False)
        depth = len(clip_visual.transformer.resblocks)
        self.backbone_name = cfg.backbone
        if cfg.backbone == "clip":
            self.layers = cfg.clip_layers or default_clip_layers(depth, len(cfg.strides))
            if max(self.layers) > depth - 2 or min(self.layers) < 0:
                raise OvsegError(f"clip_layers must lie in 0..{depth - 2} for this CLIP")
            width = clip_visual.conv1.out_channels
            self.pyramid = ClipFeaturePyramid(width, cfg.dim, self.clip.patch, cfg.strides)
        else:
            self.layers = ()
            self.pyramid = TimmFeaturePyramid(
                cfg.backbone, cfg.dim, cfg.strides, cfg.backbone_pretrained, cfg.freeze_backbone
            )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrameEncoder:
        """CLIP is frozen and always in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """F^V and U^l of uint8 frames (B, 3, H, W), sides multiples of the coarsest stride."""
        x01 = images.float() / 255.0
        unique = sorted(set(self.layers))
        with torch.no_grad():
            dense = self.clip((x01 - self.mean) / self.std, intermediate_layers=unique)
        size = (images.shape[-2], images.shape[-1])
        if self.backbone_name == "clip":
            by_layer = dict(zip(unique, dense.intermediates, strict=True))
            pyramid = self.pyramid([by_layer[i].float() for i in self.layers], size)
        else:
            pyramid = self.pyramid(x01)
        return dense.embeddings.float(), pyramid
