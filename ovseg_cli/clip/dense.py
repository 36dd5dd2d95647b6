"""Dense CLIP features with no training: a modified last ViT block gives one embedding per patch.

CLIP's image encoder is trained to summarise a whole image in its class token; its patch
tokens, taken as they are, localise poorly. Published training-free fixes change only the
last transformer block, and each is one function in ``DENSE_METHODS``:

- ``maskclip`` (Zhou et al., ECCV 2022): value embeddings only, no query-key mixing.
- ``sclip`` (Wang et al., 2023): correlative self-attention softmax(qq^T) + softmax(kk^T),
  residual and FFN kept.
- ``clearclip`` (Lan et al., ECCV 2024): self-self (q-q) attention without the residual
  connection and the FFN, which carry most of the noise. The default: strong and cheap.
- ``naclip`` (Hajimiri et al., WACV 2025): key-key attention plus a Gaussian neighbourhood
  prior on patch positions, without residual and FFN.
- ``vanilla``: the unchanged block (a baseline).

Inputs of any size work: positional embeddings are interpolated to the patch grid, or
``encode`` slides a window of the native size over the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.clip.methods import DENSE_METHOD_INFO

DenseMethod = Callable[[nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]
DENSE_METHODS: dict[str, DenseMethod] = {}

NACLIP_STD = 5.0  # Gaussian neighbourhood width in patches, as published


def register_dense_method(name: str) -> Callable[[DenseMethod], DenseMethod]:
    """Register a last-block variant under a name usable with --dense-method."""

    if name not in DENSE_METHOD_INFO:
        raise ValueError(f"dense method {name!r} is not described in ovseg_cli.clip.methods")

    def wrap(fn: DenseMethod) -> DenseMethod:
        DENSE_METHODS[name] = fn
        return fn

    return wrap


def _heads(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the block's attention, shaped (B, heads, L, head_dim), from NLD tokens."""
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    b, n, d = q.shape
    h = attn.num_heads
    return tuple(t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]


def _out(block: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = heads.shape
    return block.attn.out_proj(heads.transpose(1, 2).reshape(b, n, h * hd))


@register_dense_method("vanilla")
def vanilla_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CLIP's own last block."""
    return block(x)


@register_dense_method("maskclip")
def maskclip_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """MaskCLIP: each patch keeps its own value embedding."""
    _, _, v = _heads(block, x)
    return _out(block, v)


@register_dense_method("clearclip")
def clearclip_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ClearCLIP: q-q attention, no residual, no FFN."""
    q, _, v = _heads(block, x)
    return _out(block, F.scaled_dot_product_attention(q, q, v))


@register_dense_method("sclip")
def sclip_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SCLIP: correlative self-attention, residual and FFN kept."""
    q, k, v = _heads(block, x)
    csa = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    x = x + block.ls_1(_out(block, csa))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


_neighbourhood_cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}


def neighbourhood_prior(
    grid: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """NACLIP's additive attention prior exp(-d^2 / 2 std^2) between patches; zero for the class token."""
    key = (*grid, str(device), dtype)
    if key not in _neighbourhood_cache:
        gh, gw = grid
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
        prior = torch.exp(-torch.cdist(pos, pos).square() / (2 * NACLIP_STD**2))
        full = torch.zeros(gh * gw + 1, gh * gw + 1)
        full[1:, 1:] = prior
        _neighbourhood_cache.clear()  # one grid size per video: keep the cache bounded
        _neighbourhood_cache[key] = full.to(device=device, dtype=dtype)
    return _neighbourhood_cache[key]


@register_dense_method("naclip")
def naclip_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """NACLIP: k-k attention with a Gaussian neighbourhood prior, no residual, no FFN."""
    _, k, v = _heads(block, x)
    prior = neighbourhood_prior(grid, x.device, k.dtype)
    return _out(block, F.scaled_dot_product_attention(k, k, v, attn_mask=prior))


@dataclass
class DenseFeatures:
    """Per-patch CLIP embeddings and, if asked for, intermediate token maps."""

    embeddings: torch.Tensor  # (B, E, gh, gw), L2-normalised, in CLIP's joint space
    intermediates: list[torch.Tensor]  # each (B, D, gh, gw), from the requested blocks


class DenseClipEncoder(nn.Module):
    """A frozen open_clip ViT whose last block is replaced by a training-free dense variant."""

    def __init__(self, visual: nn.Module, method: str = "clearclip") -> None:
        super().__init__()
        if method not in DENSE_METHODS:
            raise ValueError(f"unknown dense method {method!r}; known: {', '.join(DENSE_METHODS)}")
        self.visual = visual
        self.method = method
        self.patch = int(visual.patch_size[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embeddings for a patch grid, bicubically interpolated from the native one."""
        pos = self.visual.positional_embedding
        if grid == self.native_grid:
            return pos
        cached = self._pos_cache.get(grid)
        if cached is None or cached.device != pos.device:
            cls, patches = pos[:1], pos[1:]
            nh, nw = self.native_grid
            patches = patches.reshape(1, nh, nw, -1).permute(0, 3, 1, 2).float()
            patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
            patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
            cached = torch.cat([cls, patches])
            self._pos_cache = {grid: cached}  # one size per video: keep one entry
        return cached

    def forward(
        self, images: torch.Tensor, intermediate_layers: Sequence[int] = ()
    ) -> DenseFeatures:
        """Dense embeddings of normalised images (B, 3, H, W) with H, W multiples of the patch."""
        v = self.visual
        x = v.conv1(images)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding((gh, gw)).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        wanted = {i % len(blocks) for i in intermediate_layers}
        inter: list[torch.Tensor] = []
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, blk in enumerate(blocks[:-1]):
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
            if i in wanted:
                inter.append(x[:, 1:].transpose(1, 2).reshape(b, d, gh, gw))
        x = DENSE_METHODS[self.method](blocks[-1], x, (gh, gw))
        if len(blocks) - 1 in wanted:
            inter.append(x[:, 1:].transpose(1, 2).reshape(b, d, gh, gw))
        x = v.ln_post(x[:, 1:]) @ v.proj
        emb = F.normalize(x.float(), dim=-1).transpose(1, 2).reshape(b, -1, gh, gw)
        return DenseFeatures(embeddings=emb, intermediates=inter)

    def encode(self, images: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Normalised dense embeddings (B, E, gh, gw), whole image or by sliding windows."""
        if window is None:
            return self(images).embeddings
        win = max(self.patch, window // self.patch * self.patch)
        _, _, h, w = images.shape
        if h <= win and w <= win:
            return self(images).embeddings
        stride = max(self.patch, round(win * 2 / 3 / self.patch) * self.patch)
        ys = _starts(h, win, stride)
        xs = _starts(w, win, stride)
        crops = torch.cat([images[:, :, y : y + win, x : x + win] for y in ys for x in xs])
        feats = self(crops).embeddings
        b = images.shape[0]
        p = self.patch
        acc = feats.new_zeros(b, feats.shape[1], h // p, w // p)
        count = feats.new_zeros(1, 1, h // p, w // p)
        i = 0
        for y in ys:
            for x in xs:
                tile = feats[i * b : (i + 1) * b]
                th, tw = tile.shape[-2:]
                acc[:, :, y // p : y // p + th, x // p : x // p + tw] += tile
                count[:, :, y // p : y // p + th, x // p : x // p + tw] += 1
                i += 1
        return F.normalize(acc / count, dim=1)


def _starts(length: int, win: int, stride: int) -> list[int]:
    """Window offsets covering [0, length) with the last window flush with the end."""
    if length <= win:
        return [0]
    n = math.ceil((length - win) / stride) + 1
    starts = [min(i * stride, length - win) for i in range(n)]
    return sorted(set(starts))


def model_input_size(height: int, width: int, short_side: int, patch: int) -> tuple[int, int]:
    """(h, w) the model sees: short side ~short_side, aspect kept, both multiples of the patch."""
    scale = short_side / min(height, width)
    h = max(patch, round(height * scale / patch) * patch)
    w = max(patch, round(width * scale / patch) * patch)
    return h, w


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 frame resized to (h, w) (bicubic), as a new writable array."""
    from PIL import Image

    h, w = size
    img = Image.fromarray(rgb)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.array(img)


def to_model_input(
    rgb: np.ndarray,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize an (H, W, 3) uint8 frame to (h, w) and normalise it to a (1, 3, h, w) tensor."""
    x = torch.from_numpy(resize_rgb(rgb, size)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s).unsqueeze(0)
