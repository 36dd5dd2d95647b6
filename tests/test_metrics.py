"""Metrics against hand-computed matrices and an independent implementation (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from ovseg_cli.evaluation.metrics import ConfusionMatrix, VideoConsistency, metrics_from_confusion


def test_hand_computed_example() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 3]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    m = cm.compute()
    # IoU: c0 1/(2+2-1)=1/3, c1 2/(3+3-2)=1/2, c2 1/(2+1-1)=1/2, c3 0/(0+1-0)=0 (predicted only)
    assert m["iou"] == pytest.approx([1 / 3, 1 / 2, 1 / 2, 0.0])
    assert m["mIoU"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert m["acc"][:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and math.isnan(m["acc"][3])
    assert m["mAcc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert m["pAcc"] == pytest.approx(4 / 7)
    assert m["fwIoU"] == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 1 / 2 + 2 / 7 * 1 / 2)


def test_absent_class_is_left_out_not_counted() -> None:
    conf = np.array([[5, 0, 0], [0, 0, 0], [0, 0, 3]])  # class 1 nowhere
    m = metrics_from_confusion(conf)
    assert math.isnan(m["iou"][1]) and math.isnan(m["acc"][1])
    assert m["mIoU"] == 1.0 and m["mAcc"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 7
    cm = ConfusionMatrix(n)
    all_gt, all_pred = [], []
    for _ in range(3):
        gt = rng.integers(0, n - 1, (31, 45))  # the last class never appears in the ground truth
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, n, (31, 45))
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        keep = gt != 255
        all_gt.append(gt[keep])
        all_pred.append(pred[keep])
    ref = confusion_matrix(np.concatenate(all_gt), np.concatenate(all_pred), labels=list(range(n)))
    np.testing.assert_array_equal(cm.matrix.numpy(), ref)
    m = cm.compute()
    from sklearn.metrics import jaccard_score

    sk_iou = jaccard_score(
        np.concatenate(all_gt), np.concatenate(all_pred), labels=list(range(n)), average=None
    )
    np.testing.assert_allclose(m["iou"], sk_iou)  # predicted-only class: IoU 0 in both


def test_video_consistency_on_hand_made_sequences() -> None:
    vc = VideoConsistency(windows=(2, 3))
    gt = [np.array([[0, 1, 255]]), np.array([[0, 1, 255]]), np.array([[0, 2, 255]])]
    pred = [np.array([[0, 1, 1]]), np.array([[0, 0, 2]]), np.array([[0, 0, 2]])]
    for p, g in zip(pred, gt, strict=True):
        vc.add(p, g)
    # window (0,1): stable gt pixels {0,1}; stable pred among them {0} -> 1/2
    # window (1,2): stable gt {0}; pred stable there -> 1/1
    # window (0,1,2): stable gt {0} -> 1
    out = vc.compute()
    assert out[2] == pytest.approx((0.5 + 1.0) / 2)
    assert out[3] == pytest.approx(1.0)


def test_video_consistency_averages_videos_and_resets_between_them() -> None:
    vc = VideoConsistency(windows=(2,))
    for p in ([0, 0], [0, 1]):  # video 1: one window, stable gt both pixels, pred stable on one
        vc.add(np.array(p), np.array([3, 3]))
    vc.end_video()
    vc.add(np.array([1, 1]), np.array([2, 2]))  # video 2 has a single frame: no window
    vc.end_video()
    for _ in range(2):  # video 3: perfect
        vc.add(np.array([5, 5]), np.array([5, 5]))
    assert vc.compute()[2] == pytest.approx((0.5 + 1.0) / 2)
