"""Label maps carried along chains of consecutive-frame flows, and blended softly.

What `propagate` measured best on CamVid val (labels every Kth frame, the frames in
between scored; ``benchmarks/bench_propagate.py``), against one direct flow per anchor
and nearest-neighbour warping (``segment.propagation.propagate_labels``):

- **Chained flows.** A frame's coordinates in an anchor are the composition of the flows
  between consecutive frames (i -> i-1 -> ... -> anchor), not one flow across the whole
  gap: DIS handles small displacements well and large ones badly (K=8: 82.9 -> 84.8 mIoU).
- **A finer flow.** DIS one pyramid level finer than its presets (``finest_scale`` 1) on
  the full-resolution frame: with the ``ultrafast`` preset as dear as ``fast`` at its own
  level, and better (K=8: 84.8 -> 86.5).
- **Soft warping.** The label a pixel takes is the argmax over classes of the bilinear
  one-hot maps of both anchors, blended by each side's weight: the exact soft warp, computed
  only where it can differ from nearest-neighbour warping (near a label boundary of either
  side, or where the sides disagree, ~12% of the pixels), so it costs a few milliseconds
  (K=8: 86.5 -> 87.1; K=4: 88.4).
- Weights as in keyframe mode: temporal closeness times exp(-blurred warp error / 10)
  (``segment.propagation.blend_weight``), and a side showing another scene gets none.

Measured and left out: forward-backward occlusion checks (+0.1 to +0.2 mIoU for twice the
flows), guided filtering against the frame (+0.2 for ~8 ms, and thin classes vanish at
larger radii), PAMR (-1, and seconds per frame), finest scale 0 (+1, ~5x the time).

Unlabelled pixels (255) are one more label value: they are carried like a class.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from ovseg_cli.segment.propagation import BAD_PIXEL, CONFIDENCE_SCALE, CUT_SHARE, ERROR_BLUR

FINEST_SCALE = 1  # DIS pyramid level the flows are refined to (presets: 2)


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([xs, ys])


def to_map(field: np.ndarray) -> np.ndarray:
    """The absolute coordinates (h, w, 2) a flow field points each pixel to."""
    return _grid(*field.shape[:2]) + field


def compose(to_anchor: np.ndarray, field: np.ndarray) -> np.ndarray:
    """The map of frame i into the anchor, from the map of frame j into it and the flow
    from i to j: ``to_anchor`` sampled (bilinearly) where each pixel of i lands in j."""
    return cv2.remap(
        to_anchor, to_map(field), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def at_size(coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map at the flow's resolution as a map at (height, width), in that grid's pixels."""
    h, w = coords.shape[:2]
    if (h, w) == (height, width):
        return coords
    out = cv2.resize(coords, (width, height), interpolation=cv2.INTER_LINEAR)
    out[..., 0] = (out[..., 0] + 0.5) * (width / w) - 0.5  # pixel centres stay centres
    out[..., 1] = (out[..., 1] + 0.5) * (height / h) - 0.5
    return out


def side_weight(
    grey: np.ndarray, anchor_grey: np.ndarray, coords: np.ndarray, closeness: float
) -> tuple[np.ndarray, float]:
    """Log blending weight (h, w) of one anchor and the share of the frame it mispredicts.

    log w = log(temporal closeness) - blur(|frame - anchor warped|) / CONFIDENCE_SCALE.
    """
    warped = cv2.remap(anchor_grey, coords, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    error = cv2.absdiff(grey, warped)
    bad = float(np.count_nonzero(error > BAD_PIXEL)) / error.size
    blurred = cv2.GaussianBlur(error.astype(np.float32), (0, 0), ERROR_BLUR)
    return math.log(max(closeness, 1e-6)) - blurred / CONFIDENCE_SCALE, bad


def prev_weight(
    prev: tuple[np.ndarray, float], next_: tuple[np.ndarray, float], height: int, width: int
) -> np.ndarray:
    """Weight (height, width) of the previous anchor, wp / (wp + wn), from ``side_weight``s;
    a side that mispredicts more than CUT_SHARE of the frame (another scene) gets none."""
    (log_p, bad_p), (log_n, bad_n) = prev, next_
    cut_p, cut_n = bad_p > CUT_SHARE, bad_n > CUT_SHARE
    if cut_p != cut_n:
        return np.full((height, width), 0.0 if cut_p else 1.0, np.float32)
    weight = (1.0 / (1.0 + np.exp(log_n - log_p))).astype(np.float32)
    if weight.shape != (height, width):
        weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
    return weight


class AnchorLabels:
    """An anchor's label map, prepared once for every frame that takes labels from it.

    ``packed`` holds each pixel's label and whether its 3x3 neighbourhood holds another
    label: where a frame pixel's nearest sample is not flagged, its 4 bilinear neighbours
    all share the label, and soft and nearest warping agree.
    """

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.ascontiguousarray(labels, np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        edge = (cv2.dilate(self.labels, kernel) != self.labels) | (
            cv2.erode(self.labels, kernel) != self.labels
        )
        self.packed = np.dstack([self.labels, edge.astype(np.uint8)])
        self.values = np.flatnonzero(np.bincount(self.labels.ravel(), minlength=256))

    def nearest(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, boundary flags) warped by a full-resolution map, nearest neighbour."""
        warped = cv2.remap(
            self.packed, coords, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
        )
        return warped[..., 0], warped[..., 1]

    def neighbours(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels (n, 4) of the 4 bilinear neighbours of n sample points and their bilinear
        weights (n, 4), the border replicated as ``cv2.remap`` does."""
        height, width = self.labels.shape
        x0, y0 = np.floor(xs), np.floor(ys)
        fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
        x0i, y0i = x0.astype(np.int32), y0.astype(np.int32)
        xa, xb = np.clip(x0i, 0, width - 1), np.clip(x0i + 1, 0, width - 1)
        ya, yb = np.clip(y0i, 0, height - 1), np.clip(y0i + 1, 0, height - 1)
        lab = self.labels
        labels = np.stack([lab[ya, xa], lab[ya, xb], lab[yb, xa], lab[yb, xb]], 1)
        weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
        return labels, weights


def fuse(
    prev: AnchorLabels,
    prev_coords: np.ndarray,
    next_: AnchorLabels | None = None,
    next_coords: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """A frame's labels (H, W) from one or two anchors, their full-resolution maps and the
    previous anchor's weight (H, W): the argmax over label values of
    ``weight * bilinear(one-hot prev) + (1 - weight) * bilinear(one-hot next)``, exact, but
    computed only where it can differ from the nearest labels of the heavier side."""
    labels_p, edge_p = prev.nearest(prev_coords)
    if next_ is None or next_coords is None or weight is None:
        out = labels_p.copy()
        todo = np.flatnonzero(edge_p)
        sides = [(prev, prev_coords, None)]
        values = prev.values
    else:
        labels_n, edge_n = next_.nearest(next_coords)
        out = np.where(weight >= 0.5, labels_p, labels_n)
        todo = np.flatnonzero(edge_p | edge_n | (labels_p != labels_n))
        sides = [(prev, prev_coords, weight), (next_, next_coords, 1.0 - weight)]
        values = np.union1d(prev.values, next_.values)
    if todo.size == 0:
        return out
    column = np.zeros(256, np.intp)  # label value -> its column of the votes
    column[values] = np.arange(values.size)
    rows = np.arange(todo.size)
    votes = np.zeros((todo.size, values.size), np.float32)
    for anchor, coords, side in sides:
        points = coords.reshape(-1, 2)[todo]
        labels, weights = anchor.neighbours(points[:, 0], points[:, 1])
        if side is not None:
            weights *= side.reshape(-1)[todo, None]
        columns = column[labels]
        for k in range(4):  # one neighbour at a time: each row is indexed once per add
            votes[rows, columns[:, k]] += weights[:, k]
    out.reshape(-1)[todo] = values[votes.argmax(1)].astype(np.uint8)
    return out
