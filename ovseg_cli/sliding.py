"""Sliding-window inference as the training-free references run it (their ``forward_slide``).

NACLIP naclip.py:71, SCLIP clip_segmentor.py:80 and SC-CLIP scclip_segmentor.py:86 share one
loop: square crops (224) at a stride (112), each window's per-patch logits upsampled
bilinearly to the window, summed into an image-size canvas and divided by how many windows
cover each pixel. Averaging upsampled *logits* is what distinguishes it from averaging patch
embeddings (``DenseClipEncoder.encode(window=...)``); the two give different maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovseg_cli.dense_clip import DenseClipEncoder

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
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def window_logits(
    encoder: DenseClipEncoder, crops: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """Cosine logits (B, N, h, w) of crops with unit text embeddings (N, E), at pixel size.

    The references' ``forward_feature``: per-patch cosines, upsampled bilinearly
    (align_corners=False) to the crop. No logit scale: callers multiply if they need one.
    """
    emb = encoder(crops).embeddings  # (B, E, gh, gw), float32, unit length
    logits = torch.einsum("ne,behw->bnhw", text.to(emb.device, emb.dtype), emb)
    return F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)


def slide_logits(
    encoder: DenseClipEncoder,
    images: torch.Tensor,
    text: torch.Tensor,
    crop: int | tuple[int, int] = SLIDE_CROP,
    stride: int | tuple[int, int] = SLIDE_STRIDE,
    windows_per_pass: int | None = None,
) -> torch.Tensor:
    """Pixel logits (B, N, H, W) of images (B, 3, H, W): windows' upsampled logits, averaged.

    Crop sides must be multiples of the patch size (as are H and W). All windows have the
    same size, so they run as one batch, or ``windows_per_pass`` at a time to bound memory.
    """
    b, _, h, w = images.shape
    boxes = window_boxes(h, w, crop, stride)
    step = windows_per_pass or len(boxes)
    preds = None
    for i in range(0, len(boxes), step):
        group = boxes[i : i + step]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
        logits = window_logits(encoder, crops, text)
        for j, (y1, y2, x1, x2) in enumerate(group):
            # padded into the canvas and added, as the references do (exactly a slice add)
            part = F.pad(logits[j * b : (j + 1) * b], (x1, w - x2, y1, h - y2))
            preds = part if preds is None else preds + part
    count = torch.zeros(1, 1, h, w, dtype=torch.float32)
    for y1, y2, x1, x2 in boxes:
        count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None  # window_boxes never returns an empty list
    return preds / count.to(preds.device)
