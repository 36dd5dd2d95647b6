"""OV2VSS: the whole model (paper Sec. III, Fig. 3) and its loss (Eq. 15).

A training sample is ([I_{t-k1}, ..., I_{t-kn}, I_t, I_random], G_t) (Eq. 1). Each frame is
encoded once (``encode_frame``); ``decode`` fuses the preceding frames into the target
(STCF), enhances it with the distant frame (RFE) and scores any set of classes through
the video-refined text (VTE). ``forward`` runs a whole clip, as training does; the
streaming step in ``ovseg_cli.model.streaming`` calls the same two functions with frame
features cached from earlier steps, so both compute the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.classes import UNLABELLED as IGNORE_INDEX  # the one 255: no class
from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.model.backbone import FrameEncoder, FrameFeatures
from ovseg_cli.model.config import ModelConfig
from ovseg_cli.model.random_frame_enhancement import RandomFrameEnhancement
from ovseg_cli.model.spatial_temporal_fusion import SpatialTemporalContextFusion
from ovseg_cli.model.video_text_encoding import CostVolumeDecoder, TextVideoAttention

CLIP_PREFIX = "encoder.clip."  # frozen CLIP weights: referenced by checkpoints, never stored


@dataclass
class Outputs:
    """Class logits of the target frame at the finest pyramid level (stride ``strides[0]``)."""

    logits: torch.Tensor  # (B, N, H1, W1): the main head (Eq. 14-15)
    aux: torch.Tensor  # (B, N, H1, W1): the auxiliary head on O_t (Eq. 7)


class OV2VSS(nn.Module):
    """Open-vocabulary video semantic segmentation with a frozen CLIP."""

    def __init__(self, cfg: ModelConfig, clip: ClipBundle) -> None:
        super().__init__()
        self.cfg = cfg
        embed_dim = clip.model.text_projection.shape[-1]
        levels = len(cfg.strides)
        self.stcf = SpatialTemporalContextFusion(cfg.dim, levels, cfg.pool_sizes, embed_dim)
        self.encoder = FrameEncoder(cfg, clip.visual, clip.mean, clip.std)
        self.rfe = RandomFrameEnhancement(cfg.dim, levels, cfg.regions)
        self.text = TextVideoAttention(embed_dim, cfg.text_heads)
        prior = float(clip.model.logit_scale.exp().clamp(1.0, 100.0))
        self.decoder = CostVolumeDecoder(cfg.dim, cfg.cost_dim, cfg.guidance_dim, prior)

    def train(self, mode: bool = True) -> OV2VSS:
        """Train the new modules; the frozen CLIP stays in eval mode."""
        super().train(mode)
        self.encoder.train(mode)
        return self

    def encode_frame(self, images: torch.Tensor) -> FrameFeatures:
        """Features of uint8 frames (B, 3, H, W); sides multiples of ``cfg.multiple``."""
        clip, pyramid = self.encoder(images)
        pooled = [pool(u) for pool, u in zip(self.stcf.pooling, pyramid, strict=True)]  # Eq. 2
        return FrameFeatures(clip=clip, pyramid=pyramid, pooled=pooled)

    def decode(
        self,
        past: Sequence[FrameFeatures],
        target: FrameFeatures,
        distant: FrameFeatures,
        text: torch.Tensor,
    ) -> Outputs:
        """Logits of the target frame given its preceding frames (farthest first), the
        distant frame and the classes' text embeddings (N, E)."""
        fused = self.stcf(target.pyramid, [p.pyramid for p in past[1:]], past[0].pooled)  # O_t
        aux = self.stcf.aux_head(fused, text)  # Eq. 7
        enhanced = self.rfe(fused, distant.pooled)  # Ô_t (Eq. 10)
        refined = self.text(text, [p.clip for p in past] + [target.clip])  # Eq. 11
        logits = self.decoder(refined, target.clip, target.pyramid[0], enhanced)  # Eq. 12-14
        return Outputs(logits=logits, aux=aux)

    def forward(self, frames: torch.Tensor, distant: torch.Tensor, text: torch.Tensor) -> Outputs:
        """A training clip: frames (B, T, 3, H, W) uint8 = [I_{t-k1}, ..., I_t], the distant
        frame (B, 3, H, W) and text embeddings (N, E)."""
        b, t = frames.shape[:2]
        # one encoder pass over all frames, frame-major: rows i*b .. (i+1)*b are frame i of each clip
        everything = torch.cat([frames.transpose(0, 1).flatten(0, 1), distant])
        feats = self.encode_frame(everything)
        per_frame = [_select(feats, slice(i * b, (i + 1) * b)) for i in range(t)]
        distant_feats = _select(feats, slice(t * b, (t + 1) * b))
        return self.decode(per_frame[:-1], per_frame[-1], distant_feats, text)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights a checkpoint stores: everything but the frozen CLIP."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(CLIP_PREFIX)}


def _select(f: FrameFeatures, rows: slice) -> FrameFeatures:
    return FrameFeatures(f.clip[rows], [u[rows] for u in f.pyramid], [d[rows] for d in f.pooled])


def segmentation_loss(
    out: Outputs, labels: torch.Tensor, alpha: float = 1.0, beta: float = 1.0
) -> dict[str, torch.Tensor]:
    """L = alpha CE(main) + beta CE(aux) (Eq. 15), logits upsampled to the labels, 255 ignored."""
    size = labels.shape[-2:]
    main = F.cross_entropy(_up(out.logits, size), labels, ignore_index=IGNORE_INDEX)
    aux = F.cross_entropy(_up(out.aux, size), labels, ignore_index=IGNORE_INDEX)
    return {"loss": alpha * main + beta * aux, "main": main, "aux": aux}


def _up(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def parameter_counts(model: OV2VSS) -> dict[str, dict[str, int]]:
    """Parameters per top-level module: total and trainable (CLIP counted on its own)."""
    groups: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        key = "clip (frozen)" if name.startswith(CLIP_PREFIX) else name.split(".")[0]
        if key == "encoder":
            key = "backbone pyramid"
        g = groups.setdefault(key, {"total": 0, "trainable": 0})
        g["total"] += p.numel()
        g["trainable"] += p.numel() if p.requires_grad else 0
    return groups
