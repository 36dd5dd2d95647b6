"""Segmentation metrics: the paper's mIoU, fwIoU, mAcc, pAcc (IV-C) and VSPW's video consistency.

All four come from one confusion matrix, accumulated on the model's device with
``bincount`` (no per-pixel Python). Conventions follow mmsegmentation:

- pixels whose ground truth is the ignore index (255) are never scored;
- IoU_c = TP / (TP + FP + FN) and Acc_c = TP / (TP + FN); a class absent from both the
  ground truth and the predictions has no IoU (NaN) and is left out of the means rather
  than counted as 0 or 1; a class predicted but absent from the ground truth has IoU 0;
  a class absent from the ground truth has no accuracy (NaN);
- fwIoU = sum_c freq_c IoU_c with freq_c the class's share of the scored pixels;
- pAcc = sum_c TP / scored pixels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Counts (ground truth, prediction) pairs over many frames; rows are ground truth."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.n = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one or more label maps; pixels with target 255 (or out of range) are skipped."""
        pred_t = torch.as_tensor(pred, device=self.matrix.device).reshape(-1).long()
        target_t = torch.as_tensor(target, device=self.matrix.device).reshape(-1).long()
        keep = (target_t >= 0) & (target_t < self.n)
        pair = target_t[keep] * self.n + pred_t[keep].clamp(0, self.n - 1)
        self.matrix += torch.bincount(pair, minlength=self.n * self.n).view(self.n, self.n)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix (e.g. from another process)."""
        self.matrix += other.matrix.to(self.matrix.device)

    def compute(self) -> dict[str, Any]:
        """mIoU, fwIoU, mAcc, pAcc and per-class IoU / accuracy (NaN where undefined)."""
        return metrics_from_confusion(self.matrix.cpu().numpy())


def metrics_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """The four metrics from a (C, C) confusion matrix (rows ground truth, columns prediction)."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    pred = conf.sum(axis=0)
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


class VideoConsistency:
    """VSPW's VC_n: in each window of n consecutive labelled frames, among the pixels whose
    ground truth stays the same (and is not ignored) over the window, the share whose
    prediction also stays the same. Averaged over windows within a video, then over videos.

    Only the last n frames of the current video are held (a ring buffer per window size).
    """

    def __init__(self, windows: Sequence[int] = (8, 16)) -> None:
        self.windows = tuple(int(n) for n in windows)
        if any(n < 2 for n in self.windows):
            raise ValueError("VC windows must span at least 2 frames")
        self._buf: deque[tuple[torch.Tensor, torch.Tensor]] = deque(
            maxlen=max(self.windows, default=1)
        )
        self._video: dict[int, list[float]] = {n: [] for n in self.windows}
        self._videos: dict[int, list[float]] = {n: [] for n in self.windows}

    def add(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add the next labelled frame of the current video."""
        p = torch.as_tensor(pred).long()
        g = torch.as_tensor(target).long()
        self._buf.append((p, g))
        for n in self.windows:
            if len(self._buf) >= n:
                frames = list(self._buf)[-n:]
                gts = torch.stack([f[1] for f in frames])
                preds = torch.stack([f[0] for f in frames])
                stable_gt = (gts == gts[0]).all(0) & (gts[0] != IGNORE_INDEX)
                stable_pred = (preds == preds[0]).all(0)
                count = int(stable_gt.sum())
                if count:
                    self._video[n].append(float((stable_gt & stable_pred).sum()) / count)

    def gap(self) -> None:
        """An unlabelled frame: windows may not span it."""
        self._buf.clear()

    def end_video(self) -> None:
        """Close the current video: average its windows and start afresh."""
        for n in self.windows:
            if self._video[n]:
                self._videos[n].append(float(np.mean(self._video[n])))
            self._video[n] = []
        self._buf.clear()

    def compute(self) -> dict[int, float]:
        """VC_n per window size (NaN when no video had n consecutive labelled frames)."""
        self.end_video()
        return {n: float(np.mean(v)) if v else math.nan for n, v in self._videos.items()}
