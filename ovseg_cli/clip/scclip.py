"""SC-CLIP (Bai et al., "Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation",
arXiv 2411.15869) as a dense method: ``--dense-method scclip``.

On top of the shared ViT blocks it (1) finds anomaly tokens in the last-but-one block with a
local outlier factor and replaces them by the mean of their normal neighbours, (2) smooths the
features with the affinity of a mid-level block and uses that affinity as a second attention
in the last block, and (3) runs the last block a second time on the sum of several
intermediate blocks and adds the result. The steps follow the official code (SuleBai/SC-CLIP
clip/model.py:208-310 at 0417ba9) and the reference README's account of it, except that
outlier positions are taken row-major (row = index // columns): the official code divides by
the number of rows, which is the same on square grids and wrong or failing on others.
Everything here runs on tensors (no ``.item()`` or Python loops over tokens), so it traces
for ONNX; it runs in float32 whatever the autocast, since its cuts (k-NN sets, the outlier
quantile, cosine < 0.4) are decisions that half precision would move.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.clip.dense_methods import out_proj, qkv, register_dense_method

# official defaults (scclip_segmentor.py:19-22 = configs/base_config.py; clip/model.py:247,274)
BETA = 0.4  # affinity cut: cosine similarities below it count as 0
REFERENCE_DEPTH = 12  # the layer indices below are for a 12-block ViT (ViT-B)
PRE_ADJUST = 8  # the block output (0-based, block 9) whose affinity smooths the last block's input
POST_ADJUST = 3  # block 4: the affinity that smooths the output
MULTI_START, MULTI_END = 3, 10  # blocks 4..10 are summed for the multi-level pass
RES_CLS = 0.3  # weight of the class token added back after the last block
LOF_NEIGHBOURS = 30
LOF_CONTAMINATION = 0.05  # share of patches taken as anomalies
TEMPERATURE = 3.0  # of the mid-level affinity used as attention (custom_attn, model.py:327)
AGGREGATION_EPS = 1e-6  # adaptively_aggregate, model.py:344


def layer_indices(depth: int) -> tuple[int, int, int, int]:
    """(pre, post, multi_start, multi_end) into the outputs of blocks 1..depth-1.

    The official values for 12 blocks; for other depths ovseg scales them with the depth
    (an extrapolation: the paper gives indices for ViT-B only), kept inside the range.
    """
    last = depth - 2

    def at(i: int) -> int:
        return min(last, max(0, round(i * depth / REFERENCE_DEPTH)))

    start = at(MULTI_START)
    end = min(last + 1, max(at(MULTI_END), start + 1))
    return at(PRE_ADJUST), at(POST_ADJUST), start, end


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=-1, keepdim=True) with linear interpolation, by sorting.

    Written out because aten::quantile has no ONNX export; same ranks and lerp as torch,
    computed with tensor operations so the length may be symbolic in an exported graph.
    """
    n = torch.ones(x.shape[-1], dtype=torch.float64, device=x.device).sum()
    rank = q * (n - 1)
    lo = torch.floor(rank)
    hi = torch.minimum(lo + 1, n - 1)
    s = x.sort(dim=-1).values

    def at(i: torch.Tensor) -> torch.Tensor:
        return s.gather(-1, i.long().expand(*s.shape[:-1], 1))

    return torch.lerp(at(lo), at(hi), (rank - lo).to(s.dtype))


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, L, L) squared Euclidean distances of (B, L, C) tokens, as exact as differences.

    CLIP's residual stream has large components shared by all tokens: |a|^2 + |b|^2 - 2ab
    would cancel them badly and move the k-NN sets. Centred first, it does not: the
    reference fixtures' k-NN and anomaly sets come out identical (their closest 30th/31st
    neighbour gaps are 2e-5 relative). Matrix products, unlike aten's exact cdist, export to
    ONNX and run fast there; the diagonal is set to exactly 0.
    """
    c = x - x.mean(dim=1, keepdim=True)  # distances ignore a shift; the shared part goes
    n = c.square().sum(dim=-1)
    d = (n[:, :, None] + n[:, None, :] - 2 * c @ c.transpose(1, 2)).clamp(min=0)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0)


def lof_outliers(
    tokens: torch.Tensor,
    n_neighbors: int = LOF_NEIGHBOURS,
    contamination: float = LOF_CONTAMINATION,
) -> torch.Tensor:
    """(B, L) mask of anomaly tokens among (B, L, C): LOF above its (1 - contamination) quantile.

    As SC-CLIP's ``lof_pytorch`` (model.py:208) computes it, which is not textbook LOF:
    squared Euclidean distances, and the reach distance of i to j is i's own k-distance, so
    LOF_i = mean over j in kNN(i) of d_k(i) / d_k(j).
    """
    x = tokens.float()
    d = squared_distances(x)
    k = torch.sym_min(n_neighbors, x.shape[1] - 1)  # symbolic in an exported graph
    knn_d, knn_i = d.topk(k + 1, dim=-1, largest=False)
    knn_d, knn_i = knn_d[..., 1:], knn_i[..., 1:]  # drop self (distance 0)
    reach = torch.maximum(knn_d, knn_d[..., -1:])
    lrd = k / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)
    lof = (lrd.gather(1, knn_i.flatten(1)).view_as(knn_d) / lrd.unsqueeze(-1)).mean(dim=-1)
    return lof > _quantile(lof, 1.0 - contamination)


def mean_interpolation(
    tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Replace each outlier token by the mean of its non-outlier 3x3 neighbours (model.py:348).

    Outliers without such a neighbour keep their value; the border is zero-padded.
    """
    b, n, c = tokens.shape
    gh, gw = grid
    fmap = tokens.transpose(1, 2).reshape(b, c, gh, gw)
    out = outliers.view(b, 1, gh, gw)
    keep = (~out).to(tokens.dtype)
    ring = torch.ones(1, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    ring[..., 1, 1] = 0
    total = F.conv2d(fmap * keep, ring.expand(c, 1, 3, 3), padding=1, groups=c)
    count = F.conv2d(keep, ring, padding=1)
    mean = total / count.clamp(min=1.0)
    fmap = torch.where(out & (count > 0), mean, fmap)
    return fmap.reshape(b, c, n).transpose(1, 2)


def cosine_affinity(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, L) cosine similarities of (B, L, C) tokens."""
    f = tokens / tokens.norm(dim=-1, keepdim=True)
    return f @ f.transpose(1, 2)


def cut(affinity: torch.Tensor) -> torch.Tensor:
    """Affinities below BETA set to 0 (model.py:290, 300)."""
    return torch.where(affinity < BETA, torch.zeros_like(affinity), affinity)


def aggregate(tokens: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Each token replaced by the affinity-weighted mean of all tokens (model.py:343)."""
    weights = affinity / (affinity.sum(dim=-1, keepdim=True) + AGGREGATION_EPS)
    return weights @ tokens


def affinity_attention(mid: torch.Tensor) -> torch.Tensor:
    """softmax(M), M = 3 (mid - mean(mid)) with entries below 0 at -inf: one map for all heads."""
    m = (mid - mid.mean(dim=(-2, -1), keepdim=True)) * TEMPERATURE
    m = torch.where(m < 0, torch.full_like(m, float("-inf")), m)
    return torch.softmax(m, dim=-1)


def last_block(block: nn.Module, tokens: torch.Tensor, mid_attention: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's last block, attention only: out_proj(1/2 [softmax(M) + softmax(k k^T s)] v)."""
    _, k, v = qkv(block, block.ln_1(tokens))  # custom_attn, model.py:318; q is unused
    kk = torch.softmax(k @ k.transpose(-2, -1) * k.shape[-1] ** -0.5, dim=-1)
    return out_proj(block, ((mid_attention.unsqueeze(1) + kk) / 2) @ v)


@register_dense_method("scclip", all_layers=True)
def scclip_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """SC-CLIP: anomaly repair, mid-layer affinity attention and multi-level fusion."""
    x = feats[-1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        pre, post, start, end = layer_indices(len(feats) + 1)
        x = x.float()
        cls = x[:, :1]  # block L-1's class token, added back after the last block
        outliers = lof_outliers(x[:, 1:])
        x = mean_interpolation(x[:, 1:], outliers, grid)
        mid = cosine_affinity(mean_interpolation(feats[pre][:, 1:].float(), outliers, grid))
        x = aggregate(x, cut(mid))
        mid_attention = affinity_attention(mid)
        x = last_block(block, x, mid_attention) + RES_CLS * cls
        after = cut(cosine_affinity(feats[post][:, 1:].float()))
        x = aggregate(x, after)
        multi = sum(f.float() for f in feats[start:end])  # all tokens, raw residual stream
        multi = last_block(block, multi[:, 1:], mid_attention) + RES_CLS * multi[:, :1]
        return x + aggregate(multi, after)
