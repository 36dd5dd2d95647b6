"""Random Frame Enhancement (paper Sec. III-B, Eq. 8-10, Fig. 5).

A temporally distant frame adds long-term context: its pooled multi-scale features are
merged (Eq. 8), summarised into soft object regions as in OCR (Eq. 9), and the target's
fused features O_t attend to those regions (Eq. 10). In training the distant frame is
drawn at random from the video; in a causal stream it is the most distant frame still
at hand (the first frame of the stream).

The regions are class-agnostic (their count is a setting), since the classes are only
known at run time; the attended context is added to O_t (a residual), as OCR combines
pixel and context representations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ovseg_cli.model.backbone import group_norm


class RandomFrameEnhancement(nn.Module):
    """O_t attends to soft region representations of the distant frame, giving Ô_t."""

    def __init__(self, dim: int, levels: int, regions: int) -> None:
        super().__init__()
        self.dim = dim
        self.merge = nn.Linear(dim * levels, dim)  # Eq. 8: Linear(Concat[D^l .. D^L])
        self.region_logits = nn.Conv1d(dim, regions, 1)  # Eq. 9: L_d = Conv(D_random)
        self.q = nn.Linear(dim, dim)  # Eq. 10
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 1), group_norm(dim))

    def regions(self, distant_pooled: list[torch.Tensor]) -> torch.Tensor:
        """L_r: (B, K, C) soft region representations of the distant frame (Eq. 8-9)."""
        d = self.merge(torch.cat(distant_pooled, dim=-1))  # (B, N, C)
        assign = torch.softmax(self.region_logits(d.transpose(1, 2)), dim=-1)  # (B, K, N)
        return assign @ d

    def forward(self, o: torch.Tensor, distant_pooled: list[torch.Tensor]) -> torch.Tensor:
        """Ô_t (B, C, H, W) from O_t and the distant frame's pooled features D^l."""
        lr = self.regions(distant_pooled)
        b, c, h, w = o.shape
        q = self.q(o.flatten(2).transpose(1, 2))
        attn = torch.softmax(q @ self.k(lr).transpose(1, 2) / math.sqrt(self.dim), dim=-1)
        context = (attn @ self.v(lr)).transpose(1, 2).reshape(b, c, h, w)  # Eq. 10
        return o + self.out(context)
