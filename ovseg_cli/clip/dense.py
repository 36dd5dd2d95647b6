"""Dense CLIP features with no training: CLIP's last block is replaced to give one embedding per patch.

CLIP's image encoder is trained to summarise a whole image in its class token; its patch
tokens, taken as they are, localise poorly. Published training-free fixes change the last
transformer block (SC-CLIP also reads intermediate blocks); ``ovseg_cli.clip.dense_methods`` holds
them, each matching its official code, and ``DenseClipEncoder`` runs one of them.

Inputs of any size work: positional embeddings are interpolated to the patch grid as the
method's reference does it; ``ovseg_cli.clip.sliding`` runs the references' sliding windows.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovseg_cli.clip import scclip as _scclip  # noqa: F401  (registers "scclip")
from ovseg_cli.clip.dense_methods import (
    DENSE_METHODS,
    POS_SCALE,
    POS_SIZE,
    DenseMethod,
    layer_norm,
    neighbourhood_prior,
    register_dense_method,
)
from ovseg_cli.config import RENAMED_CHOICES

__all__ = [
    "DENSE_METHODS",
    "DenseClipEncoder",
    "DenseFeatures",
    "DenseMethod",
    "model_input_size",
    "neighbourhood_prior",
    "normalise_images",
    "register_dense_method",
    "to_model_input",
    "uint8_input",
]


def dense_method(name: str) -> DenseMethod:
    """The registered method of a name, with a one-line error for unknown or renamed ones."""
    if name in DENSE_METHODS:
        return DENSE_METHODS[name]
    if ("dense_method", name) in RENAMED_CHOICES:  # changed meaning: refused, never rerouted
        raise ValueError(RENAMED_CHOICES["dense_method", name])
    raise ValueError(f"unknown dense method {name!r}; known: {', '.join(DENSE_METHODS)}")


@dataclass
class DenseFeatures:
    """Per-patch CLIP embeddings and, if asked for, intermediate token maps."""

    embeddings: torch.Tensor  # (B, E, gh, gw), L2-normalised, in CLIP's joint space
    intermediates: list[torch.Tensor]  # each (B, D, gh, gw), from the requested blocks


@contextlib.contextmanager
def _traceable_attention() -> Iterator[None]:
    """Turn off nn.MultiheadAttention's fused fast path while exporting to ONNX.

    Its aten::_native_multi_head_attention has no ONNX symbolic; the unfused path computes
    the same attention from exportable ops.
    """
    if not torch.onnx.is_in_onnx_export():
        yield
        return
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


class DenseClipEncoder(nn.Module):
    """A frozen open_clip ViT whose last block is replaced by a training-free dense method."""

    def __init__(
        self, visual: nn.Module, method: str = "clearclip", pos_resize: str | None = None
    ) -> None:
        super().__init__()
        self.spec = dense_method(method)
        if pos_resize not in (None, POS_SCALE, POS_SIZE):
            raise ValueError(
                f"pos_resize must be {POS_SCALE!r} or {POS_SIZE!r}, not {pos_resize!r}"
            )
        self.visual = visual
        self.method = method
        # the method's reference resize unless told otherwise (trained OV2VSS checkpoints
        # keep the size-based one they were trained with)
        self.pos_resize = pos_resize or self.spec.pos_resize
        self.patch = int(visual.patch_size[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embeddings for a patch grid, bicubically interpolated from the native one.

        At the native grid the references use the table as it is; the resize matrices are
        then exactly the identity, so one computation serves every size, also in a graph
        exported with symbolic sizes (no branch, no cache keyed by the size there).
        """
        pos = self.visual.positional_embedding
        tracing = is_tracing()
        if not tracing and tuple(grid) == self.native_grid:
            return pos  # what the matrices below give exactly, without the work
        cached = None if tracing else self._pos_cache.get(grid)
        if cached is None or cached.device != pos.device:
            nh, nw = self.native_grid
            # the references skip the resize for the native grid only, not for one native side
            native = (_size(grid[0], pos.device) == nh) & (_size(grid[1], pos.device) == nw)
            wy = bicubic_matrix(nh, grid[0], self.pos_resize, pos.device, native)
            wx = bicubic_matrix(nw, grid[1], self.pos_resize, pos.device, native)
            patches = pos[1:].float().reshape(nh, nw, -1)
            # F.interpolate(mode="bicubic", align_corners=False) as two matrix products, which
            # trace to ONNX (aten's bicubic with a scale factor does not)
            patches = torch.einsum("yr,rcd,xc->yxd", wy, patches, wx)
            patches = patches.reshape(-1, patches.shape[-1]).to(pos.dtype)
            cached = torch.cat([pos[:1], patches])
            if not tracing:
                self._pos_cache = {grid: cached}  # one size per video: keep one entry
        return cached

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One ordinary block on batch-first tokens, with the method's backbone numerics."""
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        y = x if batch_first else x.transpose(0, 1)
        y = self.spec.block(block, y) if self.spec.block is not None else block(y)
        return y if batch_first else y.transpose(0, 1)

    def forward(
        self, images: torch.Tensor, intermediate_layers: Sequence[int] = ()
    ) -> DenseFeatures:
        """Dense embeddings of normalised images (B, 3, H, W) with H, W multiples of the patch."""
        v = self.visual
        spec = self.spec
        x = v.conv1(images)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding((gh, gw)).to(x.dtype)
        x = layer_norm(v.ln_pre, x, spec.layer_norm_eps)
        blocks = v.transformer.resblocks
        wanted = {i % len(blocks) for i in intermediate_layers}
        inter: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        with _traceable_attention():
            for i, blk in enumerate(blocks[:-1]):
                x = self._block(blk, x)
                # only SC-CLIP reads earlier blocks; the others let them be freed
                feats = [*feats, x] if spec.all_layers else [x]
                if i in wanted:
                    inter.append(x[:, 1:].transpose(1, 2).reshape(b, d, gh, gw))
            x = spec.head(blocks[-1], feats, (gh, gw))  # (B, gh*gw, D) patch tokens
        if len(blocks) - 1 in wanted:
            inter.append(x.transpose(1, 2).reshape(b, d, gh, gw))
        x = layer_norm(v.ln_post, x, spec.layer_norm_eps) @ v.proj
        emb = F.normalize(x.float(), dim=-1).transpose(1, 2).reshape(b, -1, gh, gw)
        return DenseFeatures(embeddings=emb, intermediates=inter)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised dense embeddings (B, E, gh, gw) of a whole-image pass (windows: see
        ``ovseg_cli.clip.sliding``)."""
        return self(images).embeddings


def is_tracing() -> bool:
    """True while torch.export or torch.compile traces (sizes may be symbolic there)."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _size(n: Any, device: Any = None) -> torch.Tensor:
    """A size (perhaps symbolic while tracing) as a float64 tensor, from tensor ops only."""
    return torch.ones(n, dtype=torch.float64, device=device).sum()


def bicubic_matrix(
    n_in: int, n_out: Any, resize: str, device: Any = None, identity: Any = None
) -> torch.Tensor:
    """(n_out, n_in) weights of PyTorch's 1-D bicubic resampling from n_in to n_out samples.

    ``resize`` is how the reference picks the scale: POS_SCALE, the references' (g + 0.1) / n
    (NACLIP clip/model.py:134, SCLIP :263, SC-CLIP :375, ClearCLIP transformer.py:569), or
    POS_SIZE, n_out / n_in (the original MaskCLIP, vit.py:383). Row i holds aten's
    cubic-convolution coefficients (A = -0.75) at the source position (i + 0.5) / scale -
    0.5, in float32 as aten computes them, indices clamped at the border (align_corners=False):
    ``W @ x`` is ``F.interpolate(x, scale_factor=scale, mode="bicubic")`` along that axis, to
    float rounding. Where ``identity`` (a bool tensor; default: n_out == n_in) holds, the
    weights are exactly the identity (the references skip the resize at the native grid).
    Tensor operations only: ``n_out`` may be a symbolic size.
    """
    idx = torch.arange(n_out, device=device)
    g = _size(n_out, device)
    scale = (g + 0.1) / n_in if resize == POS_SCALE else g / n_in
    keep = g == n_in if identity is None else identity
    inv = torch.where(keep, 1.0, 1.0 / scale).float()  # 1 / scale in double, then float
    src = inv * (idx.float() + 0.5) - 0.5
    base = torch.clamp(torch.floor(src), max=n_in - 1)  # guard_index_and_lambda
    t = torch.clamp(src - base, 0.0, 1.0)
    a = -0.75

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
    weights = torch.zeros(idx.shape[0], n_in, device=device)
    for k, w in enumerate(taps):  # taps at base-1 .. base+2, clamped to the border
        col = torch.clamp(base.long() - 1 + k, 0, n_in - 1)
        weights = weights.scatter_add(1, col[:, None], w[:, None])
    return weights


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
    return normalise_images(uint8_input(rgb, size), mean, std)


def uint8_input(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W, 3) uint8 frame resized to a (1, 3, h, w) uint8 tensor, not yet normalised."""
    return torch.from_numpy(resize_rgb(rgb, size)).permute(2, 0, 1).unsqueeze(0)


def normalise_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(B, 3, h, w) uint8 images as the CLIP's float input, on their own device.

    The same operations in the same order wherever they run, so normalising on the model's
    device (a quarter of the bytes to move there) gives the host's values bit for bit.
    """
    m, s = _mean_std(tuple(mean), tuple(std), images.device)
    return images.float().div_(255.0).sub_(m).div_(s)


@functools.lru_cache(maxsize=8)
def _mean_std(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, 1, 1) mean and std on a device, made once (not a copy to the GPU per batch)."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    return m, torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
