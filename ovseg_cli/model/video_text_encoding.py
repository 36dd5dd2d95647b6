"""Video Text Encoding and the decoder (paper Sec. III-C, Eq. 11-14).

The class text embeddings (CLIP text encoder, template ensemble) are refined with the
video: they attend to the dense CLIP features of the clip's frames, followed by an FFN,
the paper's best ablation (Eq. 11). A cosine cost volume between refined text and the
target frame's dense CLIP features (Eq. 12) is embedded by convolutions, given position
from the shallow features U^1 (Eq. 13), joined with the enhanced features Ô_t (Eq. 14),
and scored by a convolutional head.

Open vocabulary: every layer acts on one class's cost slice at a time with weights shared
by all classes (as CAT-Seg), so any number of classes, seen in training or not, can be
scored. U^1 is finer than the CLIP grid here (stride 8 against the patch size), so the
cost embedding is upsampled to U^1 rather than U^1 to it (Eq. 13 upsamples the coarser).
The raw cost volume is also added to the logits with a learnt scale, so the
model starts from CLIP's own zero-shot prediction and learns a correction to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextVideoAttention(nn.Module):
    """Eq. 11 plus FFN: F^T_bar = F^T + MHSA(F^T, F^V), then F^T_bar + FFN(F^T_bar)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.norm_text = nn.LayerNorm(embed_dim)
        self.norm_video = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim)
        )

    def forward(self, text: torch.Tensor, video: list[torch.Tensor]) -> torch.Tensor:
        """(N, E) text and the clip frames' (B, E, h, w) dense features -> (B, N, E)."""
        tokens = self.norm_video(torch.cat([v.flatten(2).transpose(1, 2) for v in video], dim=1))
        t = text.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        q = self.norm_text(t)
        t = t + self.attn(q, tokens, tokens, need_weights=False)[0]
        return t + self.ffn(self.norm_ffn(t))


class CostVolumeDecoder(nn.Module):
    """Eq. 12-14 and the segmentation head: per-class logits at the finest pyramid level."""

    def __init__(self, dim: int, cost_dim: int, guidance_dim: int, prior_scale: float) -> None:
        super().__init__()
        self.cost_embed = nn.Sequential(  # X~ = Conv(X)
            nn.Conv2d(1, cost_dim, 7, padding=3),
            nn.GELU(),
            nn.Conv2d(cost_dim, cost_dim, 3, padding=1),
        )
        self.shallow = nn.Conv2d(dim, guidance_dim, 1)  # U^1, reduced before it meets every class
        self.position = nn.Sequential(  # Eq. 13: Linear(Concat[X~, U^1])
            nn.Conv2d(cost_dim + guidance_dim, cost_dim, 1), nn.GELU()
        )
        self.enhanced = nn.Conv2d(dim, guidance_dim, 1)  # Ô_t, likewise
        self.head = nn.Sequential(  # phi_seg over Eq. 14's Concat[Up(X^), Ô_t]
            nn.Conv2d(cost_dim + guidance_dim, cost_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(cost_dim, 1, 1),
        )
        self.prior_scale = nn.Parameter(torch.tensor(math.log(prior_scale)))

    def forward(
        self, text: torch.Tensor, clip: torch.Tensor, shallow: torch.Tensor, enhanced: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, E) refined text, (B, E, h, w) CLIP features, U^1 and Ô_t -> (B, N, H1, W1)."""
        b, n = text.shape[:2]
        size = shallow.shape[-2:]
        cost = torch.einsum("bne,behw->bnhw", F.normalize(text, dim=-1), clip)  # Eq. 12
        x = self.cost_embed(cost.reshape(b * n, 1, *cost.shape[-2:]))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        def per_class(guide: torch.Tensor) -> torch.Tensor:
            return guide.unsqueeze(1).expand(-1, n, -1, -1, -1).reshape(b * n, -1, *size)

        x = self.position(torch.cat([x, per_class(self.shallow(shallow))], dim=1))  # Eq. 13
        x = self.head(torch.cat([x, per_class(self.enhanced(enhanced))], dim=1))  # Eq. 14
        prior = F.interpolate(cost, size=size, mode="bilinear", align_corners=False)
        return x.reshape(b, n, *size) + self.prior_scale.exp() * prior
