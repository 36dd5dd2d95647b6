"""Segmentation metrics: the paper's mIoU, fwIoU, mAcc, pAcc (IV-C) and VSPW's video consistency.

All four come from one confusion matrix, accumulated on the model's device with
``bincount`` (no per-pixel Python). Conventions follow mmsegmentation:

- pixels whose ground truth is the ignore index (255) are never scored;
- IoU_c = TP / (TP + FP + FN) and Acc_c = TP / (TP + FN); a class absent from both the
  ground truth and the predictions has no IoU (NaN) and is left out of the means rather
  than counted as 0 or 1; a class predicted but absent from the ground truth has IoU 0;
  a class absent from the ground truth has no accuracy (NaN);
- a pixel left unlabelled by the prediction (255, ``--threshold``) counts as a miss of its
  ground-truth class (a false negative), and as no class's false positive;
- fwIoU = sum_c freq_c IoU_c with freq_c the class's share of the scored pixels;
- pAcc = sum_c TP / scored pixels.

Counts from several processes add up (``merge``, ``state``), so a distributed evaluation
reports what a single process would.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class ConfusionMatrix:
    """Counts (ground truth, prediction) pairs over many frames; rows are ground truth, and
    the last column counts pixels the prediction left unlabelled."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.n = num_classes
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def counts(
        self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """The (n, n + 1) counts of one or more label maps, on the matrix's device; pixels
        with target 255 (or out of range) are skipped."""
        arrays = isinstance(pred, np.ndarray) and isinstance(target, np.ndarray)
        if arrays and pred.dtype == target.dtype == np.uint8:
            return torch.from_numpy(_uint8_counts(pred, target, self.n)).to(self.matrix.device)
        pred_t = torch.as_tensor(pred, device=self.matrix.device).reshape(-1).long()
        target_t = torch.as_tensor(target, device=self.matrix.device).reshape(-1).long()
        keep = (target_t >= 0) & (target_t < self.n)
        column = torch.where(pred_t[keep] < self.n, pred_t[keep], self.n)  # unlabelled: last
        pair = target_t[keep] * (self.n + 1) + column
        counts = torch.bincount(pair, minlength=self.n * (self.n + 1))
        return counts.view(self.n, self.n + 1)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one or more label maps; pixels with target 255 (or out of range) are skipped."""
        self.matrix += self.counts(pred, target)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix (e.g. from another process)."""
        self.matrix += other.matrix.to(self.matrix.device)

    def compute(self) -> dict[str, Any]:
        """mIoU, fwIoU, mAcc, pAcc and per-class IoU / accuracy (NaN where undefined)."""
        return metrics_from_confusion(self.matrix.cpu().numpy())


def _uint8_counts(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """``ConfusionMatrix.counts`` of uint8 label maps from one joint histogram: a fraction
    of a millisecond for 480x360 on any CPU, where torch's indexing takes tens when its
    threads compete with the readers'."""
    joint = np.bincount((target.astype(np.uint16) << 8 | pred).ravel(), minlength=1 << 16)
    joint = joint.reshape(256, 256)[:n]
    counts = np.empty((n, n + 1), np.int64)
    counts[:, :n] = joint[:, :n]
    counts[:, n] = joint[:, n:].sum(axis=1)  # predictions beyond the classes: unlabelled
    return counts


def metrics_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """The four metrics from a (C, C) or (C, C + 1) confusion matrix (rows ground truth,
    columns prediction, an optional last column of unlabelled predictions)."""
    conf = conf.astype(np.float64)
    c = conf.shape[0]
    tp = np.diag(conf[:, :c])
    gt = conf.sum(axis=1)
    pred = conf[:, :c].sum(axis=0)
    union = gt + pred - tp
    total = gt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    freq = gt / total if total > 0 else np.zeros_like(gt)
    valid = ~np.isnan(iou)

    def mean(x: np.ndarray) -> float:
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return {
        "mIoU": mean(iou),
        "fwIoU": float(np.sum(freq[valid] * iou[valid])) if total > 0 else float("nan"),
        "mAcc": mean(acc),
        "pAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "iou": iou.tolist(),
        "acc": acc.tolist(),
        "pixels": gt.astype(np.int64).tolist(),
    }


def window_consistency(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float | None:
    """One window of VSPW's VC: among the pixels whose ground truth stays the same over the
    window, the share whose prediction stays the same too (None when there are none)."""
    stable_gt = np.ones(gts[0].shape, bool)
    stable_pred = np.ones(preds[0].shape, bool)
    for g, p in zip(gts[1:], preds[1:], strict=True):
        stable_gt &= g == gts[0]
        stable_pred &= p == preds[0]
    count = int(stable_gt.sum())
    return float((stable_gt & stable_pred).sum()) / count if count else None


class VideoConsistency:
    """VSPW's VC_n, computed as VSPW's published evaluation (``VC_perclip.py``) computes it.

    - The frames are a video's *labelled* frames in order (VSPW labels every frame it keeps;
      frames without a label are skipped, not a break).
    - Windows: n consecutive labelled frames starting at 0, 1, ..., len - n - 1 (VSPW's
      ``range(len(list_) - clip_num)``: the window ending on the video's last frame is not
      counted); a video of n labelled frames or fewer has none.
    - Pixels: those whose ground truth has the same value in all n frames, whatever the
      value (ignored pixels, 255, included, as the reference compares raw label maps); the
      window's score is the share of them whose prediction is also the same in all n.
    - VC_n: the mean over all windows of all videos (a window with no such pixel is left
      out, as the reference's ``nanmean``).

    Only the last n frames of the current video are held (a ring buffer).
    """

    def __init__(self, windows: Sequence[int] = (8, 16)) -> None:
        self.windows = tuple(int(n) for n in windows)
        if any(n < 2 for n in self.windows):
            raise ValueError("VC windows must span at least 2 frames")
        self._buf: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(self.windows, default=1))
        self.sums = dict.fromkeys(self.windows, 0.0)
        self.counts = dict.fromkeys(self.windows, 0)

    def add(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add the next labelled frame of the current video (prediction, raw ground truth)."""
        frames = list(self._buf)
        for n in self.windows:
            if len(frames) >= n:  # a later frame exists: the window before it counts
                window = frames[-n:]
                score = window_consistency([f[0] for f in window], [f[1] for f in window])
                if score is not None:
                    self.sums[n] += score
                    self.counts[n] += 1
        self._buf.append((np.asarray(pred), np.asarray(target)))

    def end_video(self) -> None:
        """Close the current video: the next frames start a new one."""
        self._buf.clear()

    def merge(self, other: VideoConsistency) -> None:
        """Add another process's window sums and counts."""
        for n in self.windows:
            self.sums[n] += other.sums[n]
            self.counts[n] += other.counts[n]

    def compute(self) -> dict[int, float]:
        """VC_n per window size (NaN when no window had a stable pixel)."""
        return {n: self.sums[n] / c if (c := self.counts[n]) else math.nan for n in self.windows}
