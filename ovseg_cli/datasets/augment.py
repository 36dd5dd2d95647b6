"""Clip augmentation: one random scale/crop/flip for every frame of a clip and its label,
photometric jitter on the images only, and the open-vocabulary input masking (IV-C).

Geometry is applied with PIL's ``resize(box=...)``: only the cropped region of each frame is
resampled (bilinear for images, nearest for labels, the same box and output size), so frames
and labels stay aligned pixel for pixel and upscaled frames cost no more than the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ovseg_cli.datasets.index import IGNORE_INDEX

# CLIP's pixel mean (0.481, 0.458, 0.408) x 255: masked and padded pixels normalise to ~0
MEAN_RGB = (123, 117, 104)
_MEAN = np.array(MEAN_RGB, np.uint8)
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")


@dataclass(frozen=True)
class Geometry:
    """Where the output comes from: a source box, resized, padded right/bottom, maybe flipped."""

    box: tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels
    size: tuple[int, int]  # (width, height) the box is resized to
    canvas: tuple[int, int]  # (width, height) of the output (>= size; the rest is padding)
    flip: bool = False

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        """The frame as it is."""
        return cls((0.0, 0.0, float(width), float(height)), (width, height), (width, height))


def random_geometry(
    width: int,
    height: int,
    *,
    crop: tuple[int, int] | None,
    scale: tuple[float, float],
    flip: bool,
    rng: np.random.Generator,
) -> Geometry:
    """A random scale (factor in ``scale``), crop (height, width) and horizontal flip."""
    s = float(rng.uniform(scale[0], scale[1]))
    sw, sh = max(1, round(width * s)), max(1, round(height * s))
    ch, cw = crop if crop is not None else (sh, sw)
    x0 = int(rng.integers(0, max(sw - cw, 0) + 1))
    y0 = int(rng.integers(0, max(sh - ch, 0) + 1))
    vw, vh = min(cw, sw - x0), min(ch, sh - y0)  # the part of the crop inside the scaled frame
    fx, fy = width / sw, height / sh
    box = (x0 * fx, y0 * fy, (x0 + vw) * fx, (y0 + vh) * fy)
    return Geometry(box, (vw, vh), (cw, ch), bool(flip and rng.random() < 0.5))


def draw_jitter(strength: float, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """Brightness, saturation and contrast factors in [1-s, 1+s], drawn once per clip.

    One draw for all frames keeps a clip consistent, as a real video's lighting is.
    """
    if strength <= 0:
        return None
    b, s, c = (float(x) for x in rng.uniform(1.0 - strength, 1.0 + strength, 3))
    return b, s, c


def jitter(img: Image.Image, factors: tuple[float, float, float]) -> Image.Image:
    """Brightness x b, saturation x s (around each pixel's grey), contrast x c (around the mean).

    The three are one affine colour transform, applied by PIL in C (rounded and clipped).
    """
    b, s, c = factors
    hist = img.convert("L").histogram()
    mean = sum(i * h for i, h in enumerate(hist)) / max(1, sum(hist))
    matrix: list[float] = []
    for r in range(3):
        matrix += [c * b * ((1 - s) * _GREY[q] + (s if q == r else 0.0)) for q in range(3)]
        matrix.append((1 - c) * b * mean)
    return img.convert("RGB", tuple(matrix))


def warp(
    img: Image.Image,
    g: Geometry,
    *,
    label: bool,
    color: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Apply a geometry to an RGB frame (bilinear, mean-colour padding) or a label (nearest, 255).

    ``color``: jitter factors for a frame (see :func:`jitter`); the padding is not jittered.
    """
    w, h = img.size
    if g.size != (w, h) or g.box != (0.0, 0.0, float(w), float(h)):
        resample = Image.Resampling.NEAREST if label else Image.Resampling.BILINEAR
        img = img.resize(g.size, resample, box=g.box)
    if color is not None and not label:
        img = jitter(img, color)
    arr = np.asarray(img)
    if g.size != g.canvas:
        out = np.empty((g.canvas[1], g.canvas[0], *arr.shape[2:]), np.uint8)
        out[...] = IGNORE_INDEX if label else MEAN_RGB
        out[: arr.shape[0], : arr.shape[1]] = arr
        arr = out
    return arr[:, ::-1] if g.flip else arr


def mask_pixels(frame: np.ndarray, label: np.ndarray, masked: np.ndarray) -> None:
    """Paint the pixels of ``frame`` whose class is masked (``masked[label]``) in the mean colour."""
    m = np.take(masked, label)
    if m.any():
        np.copyto(frame, _MEAN, where=m[..., None])
