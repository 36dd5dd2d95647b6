"""Spatial-Temporal Context Fusion (paper Sec. III-A, Eq. 2-7, Fig. 4).

Frames are fused gradually, nearest first: the farthest preceding frame's pooled features
start the history D_past; each later frame queries it and its attended features become
the new history; the target frame finally queries the history at every scale, and the
attention maps are aggregated from deep to shallow scales (after MRCFA) before they
weigh the history's values into O_t.

Two choices the paper leaves open, made here:
- the history is kept in P2T-pooled form (N tokens per scale, Eq. 2) after every update,
  so its size never depends on the frame size and Eq. 5 can mix the attention maps of
  different scales with a convolution over the N key positions;
- as in any attention block, attended features are added to the querying frame's own
  features (a residual), so every frame contributes its content to the history and O_t
  keeps the target frame's details.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.model.backbone import group_norm


class PyramidPooling(nn.Module):
    """P2T pooling f(.) (Eq. 2): average pools of several fixed sizes, each with a depthwise
    convolution as relative position encoding, flattened into N tokens."""

    def __init__(self, dim: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.sizes = sizes
        self.position = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1, groups=dim) for _ in sizes)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C) with N = sum(size^2)."""
        tokens = []
        for size, pos in zip(self.sizes, self.position, strict=True):
            p = F.adaptive_avg_pool2d(x, size)
            tokens.append((p + pos(p)).flatten(2))
        return self.norm(torch.cat(tokens, dim=2).transpose(1, 2))


class TextAlignedHead(nn.Module):
    """Scores any classes from visual features through their text embeddings (cosine)."""

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(dim, embed_dim, 1)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features, (B, N, E) or (N, E) text -> (B, N, H, W) logits."""
        v = F.normalize(self.project(x), dim=1)
        t = F.normalize(text, dim=-1)
        eq = "bne,behw->bnhw" if t.dim() == 3 else "ne,behw->bnhw"
        return self.logit_scale.exp().clamp(max=100) * torch.einsum(eq, t, v)


class SpatialTemporalContextFusion(nn.Module):
    """STCF: incremental fusion of the preceding frames into the target frame (Eq. 3-6),
    with the auxiliary head phi_seg of Eq. 7."""

    def __init__(self, dim: int, levels: int, pool_sizes: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.pooling = nn.ModuleList(PyramidPooling(dim, pool_sizes) for _ in range(levels))
        self.q = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))  # Eq. 3
        self.k = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))
        self.v = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))
        self.update = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))
        n = sum(s * s for s in pool_sizes)
        # Eq. 5: affinity maps are images over query positions with N channels (one per key)
        self.aggregate = nn.ModuleList(nn.Conv2d(n, n, 3, padding=1) for _ in range(levels - 1))
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 1), group_norm(dim))
        self.aux_head = TextAlignedHead(dim, embed_dim)  # phi_seg of Eq. 7

    def _affinity(self, level: int, u: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """A = Q K_past^T / sqrt(C) (Eq. 3-4): (B, H*W, N) from a frame's U^l and D_past^l."""
        q = self.q[level](u.flatten(2).transpose(1, 2))
        k = self.k[level](history)
        return q @ k.transpose(1, 2) / math.sqrt(self.dim)

    def history(
        self, past_pyramids: list[list[torch.Tensor]], first_pooled: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """D_past per level after fusing the preceding frames, farthest first (Eq. 3-4).

        ``first_pooled`` is D of the farthest frame (D_past = D_t0); ``past_pyramids`` are
        the U^l of the following preceding frames, in temporal order.
        """
        history = list(first_pooled)
        for pyramid in past_pyramids:
            for lvl, u in enumerate(pyramid):
                attn = torch.softmax(self._affinity(lvl, u, history[lvl]), dim=-1)
                n = attn @ self.v[lvl](history[lvl])  # N_ti = A V_past
                b, c, h, w = u.shape
                fused = u + self.update[lvl](n).transpose(1, 2).reshape(b, c, h, w)
                history[lvl] = self.pooling[lvl](fused)  # D_past <- N_ti, kept pooled
        return history

    def forward(
        self,
        target: list[torch.Tensor],
        past_pyramids: list[list[torch.Tensor]],
        first_pooled: list[torch.Tensor],
    ) -> torch.Tensor:
        """O_t (B, C, H_1, W_1) at the finest level, from the target's U^l and the preceding
        frames (``first_pooled``: D of the farthest; ``past_pyramids``: U^l of the others)."""
        history = self.history(past_pyramids, first_pooled)
        maps = []
        for lvl, u in enumerate(target):
            b, _, h, w = u.shape
            maps.append(self._affinity(lvl, u, history[lvl]).transpose(1, 2).reshape(b, -1, h, w))
        agg = maps[-1]  # Eq. 5: B^L = A^L
        for lvl in range(len(maps) - 2, -1, -1):  # B^l = Conv(Up(B^{l+1}) + A^l)
            up = F.interpolate(agg, size=maps[lvl].shape[-2:], mode="bilinear", align_corners=False)
            agg = self.aggregate[lvl](up + maps[lvl])
        b, _, h, w = agg.shape
        attn = torch.softmax(agg.flatten(2).transpose(1, 2), dim=-1)  # (B, H1*W1, N)
        values = self.v[0](history[0])  # V_past at the finest level
        o = (attn @ values).transpose(1, 2).reshape(b, self.dim, h, w)  # Eq. 6: O_t = B V_past
        return target[0] + self.out(o)
