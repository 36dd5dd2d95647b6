"""Training-free dense CLIP methods: what each one does after the shared ViT blocks.

A method is a ``DenseMethod``: a head that turns the outputs of blocks 1..L-1 into one token
per patch (replacing CLIP's last block), and the few backbone details in which the published
code differs (how the positional embedding is resized, LayerNorm eps and GELU in every
block). Each head reproduces its official implementation; tests/test_reference_methods.py
checks them against golden outputs of that code (../shared/reference/dense_clip/README.md,
which gives the reference line numbers cited here).

- ``vanilla``: CLIP's own last block (a baseline).
- ``clearclip`` (Lan et al., ECCV 2024): q-q attention, no residual, no FFN. The default.
- ``sclip`` (Wang et al., ECCV 2024): softmax(qq^T) + softmax(kk^T), residual and FFN kept.
- ``naclip`` (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood prior,
  no residual, no FFN.
- ``scclip`` (Bai et al., arXiv 2411.15869): anomaly-token repair, mid-layer affinity and
  multi-level fusion (``ovseg_cli.clip.scclip``).
- ``maskclip-original`` (Zhou et al., ECCV 2022) as its code runs: the value path with its
  residual and FFN, exact GELU and LayerNorm eps 1e-6 in every block, size-based resize.
- ``value``: each patch's value embedding alone, out_proj(v), no residual, no FFN. This is
  ClearCLIP's "MaskCLIP" mode, and what ovseg called ``maskclip`` before the original existed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.clip.methods import DENSE_METHOD_INFO

# head(last block, outputs of blocks 1..L-1 (each (B, 1 + gh*gw, D), cls first), grid)
# -> patch tokens (B, gh*gw, D), before ln_post
DenseHead = Callable[[nn.Module, Sequence[torch.Tensor], tuple[int, int]], torch.Tensor]
# block(block, tokens) -> tokens: how a method runs the ordinary blocks (batch-first tokens)
BlockRunner = Callable[[nn.Module, torch.Tensor], torch.Tensor]

POS_SCALE = "scale"  # F.interpolate(scale_factor=(g + 0.1) / n): every reference but MaskCLIP
POS_SIZE = "size"  # F.interpolate(size=g): the original MaskCLIP (vit.py:383)
NACLIP_STD = 5.0  # Gaussian neighbourhood width in patches (naclip.py:20-21)
MASKCLIP_EPS = 1e-6  # LayerNorm eps of MaskCLIP's ViT (configs/_base_/models/maskclip_vit16.py)


@dataclass(frozen=True)
class DenseMethod:
    """A training-free dense method: its head and the backbone details its reference uses."""

    name: str
    head: DenseHead
    summary: str
    pos_resize: str = POS_SCALE
    block: BlockRunner | None = None  # None: the model's own block forward
    layer_norm_eps: float | None = None  # of ln_pre and ln_post; None: the model's own
    all_layers: bool = False  # the head reads blocks other than the last but one


DENSE_METHODS: dict[str, DenseMethod] = {}


def register_dense_method(
    name: str,
    *,
    pos_resize: str = POS_SCALE,
    block: BlockRunner | None = None,
    layer_norm_eps: float | None = None,
    all_layers: bool = False,
) -> Callable[[DenseHead], DenseHead]:
    """Register a head under a name usable with --dense-method; its docstring is the summary."""
    if name not in DENSE_METHOD_INFO:
        raise ValueError(f"dense method {name!r} is not described in ovseg_cli.clip.methods")

    def wrap(fn: DenseHead) -> DenseHead:
        summary = (fn.__doc__ or name).strip().splitlines()[0]
        DENSE_METHODS[name] = DenseMethod(
            name, fn, summary, pos_resize, block, layer_norm_eps, all_layers
        )
        return fn

    return wrap


def qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a block's attention on already normalised tokens, each (B, heads, L, hd)."""
    attn = block.attn
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    b, n, d = q.shape
    h = attn.num_heads
    return tuple(t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]


def out_proj(block: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    """Concatenate the heads (B, heads, L, hd) and apply the attention's output projection."""
    b, h, n, hd = heads.shape
    return block.attn.out_proj(heads.transpose(1, 2).reshape(b, n, h * hd))


def _heads(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return qkv(block, block.ln_1(x))


@register_dense_method("vanilla")
def vanilla_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """CLIP's own last block (a baseline; ClearCLIP transformer.py:601, ignore_residual=False)."""
    return block(feats[-1])[:, 1:]


@register_dense_method("value")
def value_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """Value embeddings only, out_proj(v), no residual, no FFN (ClearCLIP's MaskCLIP mode)."""
    # ClearCLIP transformer.py:604: a mask that is 0 on the diagonal, -inf elsewhere, i.e. A = I
    _, _, v = _heads(block, feats[-1])
    return out_proj(block, v)[:, 1:]


@register_dense_method("clearclip")
def clearclip_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """ClearCLIP: out_proj(softmax(q q^T s) v), no residual, no FFN (transformer.py:614)."""
    q, _, v = _heads(block, feats[-1])
    return out_proj(block, F.scaled_dot_product_attention(q, q, v))[:, 1:]


@register_dense_method("sclip")
def sclip_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """SCLIP: x + out_proj((softmax(qq^T s) + softmax(kk^T s)) v), then + FFN (model.py:283)."""
    x = feats[-1]
    q, k, v = _heads(block, x)
    # the two softmaxes are summed, not averaged (SCLIP clip/model.py:295)
    csa = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    x = x + block.ls_1(out_proj(block, csa))
    return (x + block.ls_2(block.mlp(block.ln_2(x))))[:, 1:]


_neighbourhood_cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}


def neighbourhood_prior(
    grid: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """NACLIP's additive attention prior exp(-d^2 / 2 std^2) between patches; zero for the class token."""
    tracing = torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    key = None if tracing else (*grid, str(device), dtype)  # sizes may be symbolic when tracing
    if key is not None and key in _neighbourhood_cache:
        return _neighbourhood_cache[key]
    gh, gw = grid
    ys, xs = torch.meshgrid(
        torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij"
    )
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    # NACLIP clip/model.py:154-168 (gaussian_window, get_attention_addition)
    d2 = (pos[:, None, :] - pos[None, :, :]).square().sum(-1)
    prior = F.pad(torch.exp(-d2 / (2 * NACLIP_STD**2)), (1, 0, 1, 0)).to(dtype)  # cls row/col 0
    if key is not None:
        if len(_neighbourhood_cache) > 4:  # a video has one or two grids: keep the cache bounded
            _neighbourhood_cache.clear()
        _neighbourhood_cache[key] = prior
    return prior


@register_dense_method("naclip")
def naclip_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """NACLIP: out_proj(softmax(k k^T s + Gaussian prior) v), no residual, no FFN (model.py:118)."""
    _, k, v = _heads(block, feats[-1])
    prior = neighbourhood_prior(grid, k.device, k.dtype)
    return out_proj(block, F.scaled_dot_product_attention(k, k, v, attn_mask=prior))[:, 1:]


def layer_norm(ln: nn.Module, x: torch.Tensor, eps: float | None) -> torch.Tensor:
    """A LayerNorm module applied with another eps (None: its own), in the input's dtype."""
    if eps is None:
        return ln(x)
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, eps).to(x.dtype)


def mlp_exact_gelu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's MLP with erf GELU in place of its own activation (mmcv FFN, act GELU)."""
    return block.mlp.c_proj(F.gelu(block.mlp.c_fc(x)))


def maskclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One ordinary block as MaskCLIP's mmseg ViT runs it: LN eps 1e-6 and erf GELU."""
    y = layer_norm(block.ln_1, x, MASKCLIP_EPS)
    x = x + block.ls_1(block.attn(y, y, y, need_weights=False)[0])
    y = layer_norm(block.ln_2, x, MASKCLIP_EPS)
    return x + block.ls_2(mlp_exact_gelu(block, y))


@register_dense_method(
    "maskclip-original", pos_resize=POS_SIZE, block=maskclip_block, layer_norm_eps=MASKCLIP_EPS
)
def maskclip_original_head(
    block: nn.Module, feats: Sequence[torch.Tensor], grid: tuple[int, int]
) -> torch.Tensor:
    """MaskCLIP as published: out_proj(v) + x, then + FFN; erf GELU, LN eps 1e-6 throughout."""
    x = feats[-1]
    _, _, v = qkv(block, layer_norm(block.ln_1, x, MASKCLIP_EPS))
    v = x + block.ls_1(out_proj(block, v))  # MaskCLIP vit.py:94-104: the residual is kept
    v = v + block.ls_2(mlp_exact_gelu(block, layer_norm(block.ln_2, v, MASKCLIP_EPS)))
    return v[:, 1:]


def native_grid_scale(native: int, grid: int) -> float:
    """The references' bicubic scale factor for a positional-embedding side: (g + 0.1) / n."""
    # the +0.1 makes floor(n * scale) == g despite rounding; the sampling uses this scale,
    # src = (dst + 0.5) * n / (g + 0.1) - 0.5, not n / g (NACLIP clip/model.py:134)
    return (grid + 0.1) / native
