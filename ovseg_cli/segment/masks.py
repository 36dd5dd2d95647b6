"""Class scores to label masks at the frame's size: bilinear upsampling, then the best class.

The full-size maps of N classes are never held at once: the best class is kept with a
running maximum, one class map at a time.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ovseg_cli.classes import UNLABELLED


@functools.lru_cache(maxsize=8)
def _interp_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, as F.interpolate(align_corners=False)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = (src - i0).float()
    m = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(device)


def logits_to_mask(
    logits: torch.Tensor, size: tuple[int, int], threshold: float | None = None
) -> np.ndarray:
    """Upsample (N, gh, gw) logits bilinearly to (H, W) and take the best class per pixel.

    The best class is kept with a running maximum, one class map at a time, so all N
    full-size maps are never held. On a CPU each map is upsampled by OpenCV (~2.5x faster
    than the matrix products below, ~30x faster than F.interpolate + argmax(dim=0)); on a
    GPU, bilinear upsampling being separable, each map is two small matrix products on the
    device and only the uint8 mask comes back. Both match F.interpolate(align_corners=False).

    With a ``threshold``, pixels whose best class probability (softmax over the classes)
    is below it become 255 (unlabelled). The probability is computed at the model's
    resolution and its maximum upsampled bilinearly like the logits: one more small map,
    not N full-size softmaxes; near class borders it can differ slightly from the
    per-pixel softmax of the upsampled logits.
    """
    logits = logits.detach().float()
    confidence = torch.softmax(logits, dim=0).amax(dim=0) if threshold is not None else None
    if logits.device.type == "cpu":
        return _mask_on_cpu(logits.numpy(), size, threshold, confidence)
    return _mask_on_device(logits, size, threshold, confidence)


def _mask_on_device(
    logits: torch.Tensor,
    size: tuple[int, int],
    threshold: float | None,
    confidence: torch.Tensor | None,
) -> np.ndarray:
    dev = str(logits.device)
    wy = _interp_matrix(logits.shape[1], size[0], dev)
    wx_t = _interp_matrix(logits.shape[2], size[1], dev).T.contiguous()
    best = wy @ logits[0] @ wx_t
    label = torch.zeros(size, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        score = wy @ logits[c] @ wx_t
        label.masked_fill_(score > best, c)  # strict: ties keep the lower index, like argmax
        torch.maximum(best, score, out=best)
    if confidence is not None:
        label.masked_fill_(wy @ confidence @ wx_t < threshold, UNLABELLED)
    return label.cpu().numpy()


def _mask_on_cpu(
    logits: np.ndarray,
    size: tuple[int, int],
    threshold: float | None,
    confidence: torch.Tensor | None,
) -> np.ndarray:
    import cv2

    def up(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return cv2.resize(scores, (size[1], size[0]), dst=out, interpolation=cv2.INTER_LINEAR)

    best = up(logits[0])
    score = np.empty_like(best)
    label = np.zeros(size, np.uint8)
    for c in range(1, logits.shape[0]):
        up(logits[c], score)
        np.copyto(label, c, where=score > best)  # strict: ties keep the lower index
        np.maximum(best, score, out=best)
    if confidence is not None:
        np.copyto(label, UNLABELLED, where=up(confidence.numpy()) < threshold)
    return label
