"""The training-free dense methods by name: what each is, where it comes from, what it scored.

No torch here: the CLI lists the names in its help and the config checks choices against
them. ``ovseg_cli.clip.dense_methods`` registers one implementation per name and refuses
names that are not listed here, so this table and the code cannot drift apart.

Published mIoU (%) are ViT-B/16 with the method's own evaluation protocol (no background
class; short side 560 for Cityscapes, 448 for COCO-Stuff, sliding 224 px windows with stride
112, ImageNet's 80 prompt templates), as each paper reports them; None where it reports none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DenseMethodInfo:
    """One training-free way of making CLIP's patch features dense."""

    summary: str
    paper: str
    code: str  # the official repository its implementation is checked against
    cityscapes: float | None = None  # published mIoU, ViT-B/16
    coco_stuff: float | None = None


DENSE_METHOD_INFO: dict[str, DenseMethodInfo] = {
    "scclip": DenseMethodInfo(
        "anomaly tokens repaired, mid-layer affinity, multi-level fusion",
        "Bai et al., SC-CLIP, arXiv 2411.15869", "github.com/SuleBai/SC-CLIP", 41.0, 26.6,
    ),
    "naclip": DenseMethodInfo(
        "k-k attention with a Gaussian neighbourhood prior, no residual, no FFN",
        "Hajimiri et al., NACLIP, WACV 2025", "github.com/sinahmr/NACLIP", 35.5, 23.3,
    ),
    "sclip": DenseMethodInfo(
        "correlative self-attention q-q + k-k, residual and FFN kept",
        "Wang et al., SCLIP, ECCV 2024", "github.com/wangf3014/SCLIP", 32.2, 22.4,
    ),
    "clearclip": DenseMethodInfo(
        "q-q attention, no residual, no FFN",
        "Lan et al., ClearCLIP, ECCV 2024", "github.com/mc-lan/ClearCLIP", 30.0, 23.9,
    ),
    "maskclip-original": DenseMethodInfo(
        "value path with residual and FFN, exact GELU, LayerNorm eps 1e-6 (as its code runs)",
        "Zhou et al., MaskCLIP, ECCV 2022", "github.com/chongzhou96/MaskCLIP",
    ),
    "value": DenseMethodInfo(
        "each patch's value embedding alone: out_proj(v), no residual, no FFN",
        "ClearCLIP's 'MaskCLIP' mode", "github.com/mc-lan/ClearCLIP",
    ),
    "vanilla": DenseMethodInfo(
        "CLIP's own last block (a baseline)", "Radford et al., CLIP, ICML 2021",
        "github.com/mc-lan/ClearCLIP",
    ),
}  # fmt: skip

DENSE_METHOD_NAMES = tuple(DENSE_METHOD_INFO)
