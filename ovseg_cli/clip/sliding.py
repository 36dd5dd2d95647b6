"""Sliding-window inference as the training-free references run it (their ``forward_slide``).

NACLIP naclip.py:71, SCLIP clip_segmentor.py:80 and SC-CLIP scclip_segmentor.py:86 share one
loop: square crops (224) at a stride (112), each window's per-patch logits upsampled
bilinearly to the window, summed into an image-size canvas and divided by how many windows
cover each pixel. Averaging upsampled *logits* is what distinguishes it from averaging patch
embeddings (what ovseg did before); the two give different maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ovseg_cli.clip.dense import DenseClipEncoder

SLIDE_CROP = 224  # every reference's default (slide_crop)
SLIDE_STRIDE = 112  # slide_stride


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_boxes(
    height: int, width: int, crop: int | tuple[int, int], stride: int | tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of each window, in the references' order (rows, then columns).

    Windows start at multiples of the stride and are moved back to end at the image border;
    a side shorter than the crop is taken whole (no padding).
    """
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop and stride must be positive, not {crop} and {stride}")
    if sh > ch or sw > cw:  # windows further apart than they are wide leave gaps
        raise ValueError(f"stride {stride} exceeds crop {crop}: the windows would leave gaps")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def window_embeddings(
    encoder: DenseClipEncoder,
    images: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    windows_per_pass: int | None = None,
) -> torch.Tensor:
    """Dense embeddings (W, B, E, gh, gw) of each window of images (B, 3, H, W).

    All windows have the same size, so they run as one batch, or ``windows_per_pass`` at a
    time to bound memory. Window sides must be multiples of the patch size.
    """
    b = images.shape[0]
    step = windows_per_pass or len(boxes)
    parts = []
    for i in range(0, len(boxes), step):
        crops = [images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes[i : i + step]]
        parts.append(encoder(torch.cat(crops)).embeddings)
    emb = torch.cat(parts)
    return emb.view(len(boxes), b, *emb.shape[1:])


def merge_window_logits(
    embeddings: torch.Tensor,
    text: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    size: tuple[int, int],
) -> torch.Tensor:
    """Pixel logits (B, N, H, W) from window embeddings (W, B, E, gh, gw) and unit text (N, E).

    Each window's per-patch cosines (the references' ``forward_feature``) are upsampled
    bilinearly (align_corners=False) to the window, padded into the image canvas and added;
    the sum is divided by the number of windows covering each pixel. No logit scale:
    callers multiply if they need one (the average is linear, so before or after is alike).
    """
    h, w = size
    text = text.to(embeddings.device, embeddings.dtype)
    preds = None
    for emb, (y1, y2, x1, x2) in zip(embeddings, boxes, strict=True):
        logits = torch.einsum("ne,behw->bnhw", text, emb)
        logits = F.interpolate(
            logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
        )
        # padded and added as the references do: the same sums as adding into a slice
        part = F.pad(logits, (x1, w - x2, y1, h - y2))
        preds = part if preds is None else preds + part
    count = torch.zeros(1, 1, h, w, dtype=torch.float32)
    for y1, y2, x1, x2 in boxes:
        count[:, :, y1:y2, x1:x2] += 1
    if preds is None or not bool((count > 0).all()):
        # an uncovered pixel would divide by zero: NaN, then silently class 0
        raise ValueError(f"the windows {list(boxes)} do not cover the {h}x{w} image")
    return preds / count.to(preds.device)


def slide_logits(
    encoder: DenseClipEncoder,
    images: torch.Tensor,
    text: torch.Tensor,
    crop: int | tuple[int, int] = SLIDE_CROP,
    stride: int | tuple[int, int] = SLIDE_STRIDE,
    windows_per_pass: int | None = None,
) -> torch.Tensor:
    """Pixel logits (B, N, H, W) of images (B, 3, H, W): windows' upsampled logits, averaged.

    ``window_boxes``, ``window_embeddings`` and ``merge_window_logits`` in one call; a
    caller that transforms the window embeddings (e.g. temporal fusion) runs the three.
    """
    boxes = window_boxes(images.shape[-2], images.shape[-1], crop, stride)
    emb = window_embeddings(encoder, images, boxes, windows_per_pass)
    return merge_window_logits(emb, text, boxes, (images.shape[-2], images.shape[-1]))
