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
    np.testing.assert_array_equal(cm.matrix.numpy()[:, :4], expected)
    assert not cm.matrix[:, 4].any()  # nothing left unlabelled
    m = cm.compute()
    # IoU: c0 1/(2+2-1)=1/3, c1 2/(3+3-2)=1/2, c2 1/(2+1-1)=1/2, c3 0/(0+1-0)=0 (predicted only)
    assert m["iou"] == pytest.approx([1 / 3, 1 / 2, 1 / 2, 0.0])
    assert m["mIoU"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert m["acc"][:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and math.isnan(m["acc"][3])
    assert m["mAcc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert m["pAcc"] == pytest.approx(4 / 7)
    assert m["fwIoU"] == pytest.approx(2 / 7 * 1 / 3 + 3 / 7 * 1 / 2 + 2 / 7 * 1 / 2)


def test_unlabelled_prediction_is_a_miss_not_a_class() -> None:
    """--threshold leaves pixels at 255: they count against their ground-truth class only."""
    gt = np.array([0, 0, 1, 1])
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 255, 1, 255]), gt)
    np.testing.assert_array_equal(cm.matrix.numpy(), [[1, 0, 1], [0, 1, 1]])
    m = cm.compute()
    assert m["iou"] == pytest.approx([1 / 2, 1 / 2])  # TP 1 / (gt 2 + pred 1 - TP 1)
    assert m["pAcc"] == pytest.approx(2 / 4)


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
    np.testing.assert_array_equal(cm.matrix.numpy()[:, :n], ref)
    m = cm.compute()
    from sklearn.metrics import jaccard_score

    sk_iou = jaccard_score(
        np.concatenate(all_gt), np.concatenate(all_pred), labels=list(range(n)), average=None
    )
    np.testing.assert_allclose(m["iou"], sk_iou)  # predicted-only class: IoU 0 in both


def vspw_vc(videos: list[list[tuple[np.ndarray, np.ndarray]]], n: int) -> float:
    """VSPW's VC_n written out plainly from its definition, independently of ovseg's streaming
    class: per video the list of labelled (prediction, ground truth) frames; windows start at
    0 .. len - n - 1; pixels whose raw ground truth is constant over the window (whatever the
    value, 255 included); the mean over every window of every video, empty windows skipped."""
    scores = []
    for frames in videos:
        if len(frames) <= n:
            continue
        for start in range(len(frames) - n):
            window = frames[start : start + n]
            gts = np.stack([g for _, g in window])
            preds = np.stack([p for p, _ in window])
            same_gt = np.all(gts == gts[0], axis=0)
            same_pred = np.all(preds == preds[0], axis=0)
            scores.append(
                np.sum(same_gt & same_pred) / np.sum(same_gt) if same_gt.any() else np.nan
            )
    return float(np.nanmean(scores)) if scores else math.nan


def test_video_consistency_on_a_hand_made_sequence() -> None:
    vc = VideoConsistency(windows=(2, 3))
    gt = [[0, 1, 255], [0, 1, 255], [0, 2, 255], [0, 2, 255]]
    pred = [[0, 1, 1], [0, 0, 2], [0, 0, 2], [1, 0, 2]]
    for p, g in zip(pred, gt, strict=True):
        vc.add(np.array([p]), np.array([g]))
    # VC2 windows (0,1), (1,2); (2,3) ends on the last frame and does not count:
    #   (0,1): stable gt {0, 1, 2 (255 too)}, pred stable at {0} -> 1/3
    #   (1,2): stable gt {0, 2}, pred stable at both -> 1
    # VC3 window (0,1,2): stable gt {0, 2}; pred stable at {0} -> 1/2
    out = vc.compute()
    assert out[2] == pytest.approx((1 / 3 + 1) / 2)
    assert out[3] == pytest.approx(1 / 2)
    assert vc.counts == {2: 2, 3: 1}


@pytest.mark.parametrize("seed", range(6))
def test_video_consistency_equals_vspws_definition(seed: int) -> None:
    """Random videos of random lengths (some too short for a window, some with labelled frames
    far apart, as where unlabelled frames were skipped), values incl. 255."""
    rng = np.random.default_rng(seed)
    videos = []
    for _ in range(4):
        length = int(rng.integers(1, 14))
        base_gt = rng.choice([0, 1, 2, 255], size=(5, 6))
        base_pred = rng.integers(0, 3, size=(5, 6))
        frames = []
        for _ in range(length):
            g = np.where(rng.random(base_gt.shape) < 0.15, rng.choice([0, 1, 255]), base_gt)
            p = np.where(rng.random(base_pred.shape) < 0.2, rng.integers(0, 3), base_pred)
            frames.append((p.astype(np.uint8), g.astype(np.uint8)))
        videos.append(frames)
    vc = VideoConsistency(windows=(2, 4, 8))
    for frames in videos:
        for p, g in frames:
            vc.add(p, g)
        vc.end_video()
    out = vc.compute()
    for n in (2, 4, 8):
        expected = vspw_vc(videos, n)
        assert (math.isnan(out[n]) and math.isnan(expected)) or out[n] == pytest.approx(expected)


def test_uint8_label_maps_count_as_the_torch_path_does() -> None:
    """The numpy histogram for uint8 maps gives torch's counts: ignored ground truth left
    out, predictions beyond the classes (255 included) in the last column."""
    rng = np.random.default_rng(3)
    fast, reference = ConfusionMatrix(5), ConfusionMatrix(5)
    for _ in range(3):
        gt = rng.choice(np.array([0, 1, 2, 3, 4, 255], np.uint8), (30, 40))
        pred = rng.choice(np.array([0, 1, 2, 3, 4, 7, 255], np.uint8), (30, 40))
        fast.update(pred, gt)
        reference.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert fast.matrix.tolist() == reference.matrix.tolist()
    assert fast.matrix[:, 5].sum() > 0  # the unlabelled column was exercised
