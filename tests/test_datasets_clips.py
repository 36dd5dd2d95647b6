"""The clip sampler (Eq. 1): gaps, start of video, I_random, the open-vocabulary masking of
labels and inputs, and augmentation that keeps labels aligned with frames."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_factory import COLORS, make_folder, pattern, save_frame, save_label
from PIL import Image

from ovseg_cli.datasets import MEAN_RGB, ClipDataset, ClipSettings, make_loader, prepare
from ovseg_cli.datasets.augment import random_geometry
from ovseg_cli.datasets.clips import context_indices, farthest_index, random_index
from ovseg_cli.datasets.index import PreparedIndex
from ovseg_cli.errors import OvsegError

EVAL = ClipSettings(train=False)
VALUES = [0, 1, 2, 3, 255]  # folder classes: road, person, sky, car; 255 ignore


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> PreparedIndex:
    """'walk' (train, 12 frames, labelled 0, 3, 6, 9), 'ride' (val, 12 frames, all labelled),
    'still' (test, 4 identical frames, all labelled)."""
    root = make_folder(tmp_path_factory.mktemp("data") / "mine")
    (root / "test.txt").write_text("still\n")
    for f in range(4):
        save_frame(root / "still" / "frames" / f"{f}.png", pattern(0, VALUES))
        save_label(root / "still" / "masks" / f"{f}.png", pattern(0, VALUES))
    return prepare("folder", root, tmp_path_factory.mktemp("prepared") / "out").index


def _image(index: PreparedIndex, video: str, j: int) -> np.ndarray:
    v = next(v for v in index.videos if v.name == video)
    return np.asarray(Image.open(v.frames[j].image).convert("RGB"))


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def test_context_frames_repeat_the_first_near_the_start() -> None:
    assert context_indices(20, (9, 6, 3)) == [11, 14, 17, 20]
    assert context_indices(5, (9, 6, 3)) == [0, 0, 2, 5]
    assert context_indices(0, (9, 6, 3)) == [0, 0, 0, 0]
    assert context_indices(4, (2,)) == [2, 4]


def test_random_frame_distance_and_fallback() -> None:
    assert farthest_index(3, 10) == 9 and farthest_index(7, 10) == 0 and farthest_index(2, 5) == 0
    rng = np.random.default_rng(0)
    draws = [random_index(20, 40, 10, rng) for _ in range(400)]
    assert all(abs(d - 20) >= 10 for d in draws)
    assert {min(draws), max(draws)} == {0, 39} and 10 in draws and 30 in draws
    assert {random_index(5, 12, 10, rng) for _ in range(50)} == {11}  # none that far: farthest
    assert {random_index(0, 12, 10, rng) for _ in range(50)} == {10, 11}


def test_eval_items_are_labelled_frames_at_full_size(index: PreparedIndex) -> None:
    ds = ClipDataset(index, "train", range(4), EVAL)
    assert len(ds) == 4 and ds.class_names == ["road", "person", "sky", "car"]
    item = ds[3]
    assert item["video"] == "walk" and item["frame"] == 9
    assert item["indices"].tolist() == [0, 3, 6, 9, 0]  # I_random: the most distant frame
    assert item["frames"].shape == (4, 3, 30, 40) and item["frames"].dtype == torch.uint8
    assert item["random"].shape == (3, 30, 40) and item["label"].dtype == torch.int64
    for k, j in enumerate([0, 3, 6, 9]):
        assert torch.equal(item["frames"][k], _chw(_image(index, "walk", j)))
    assert torch.equal(item["random"], _chw(_image(index, "walk", 0)))
    assert torch.equal(item["label"], torch.from_numpy(pattern(9, VALUES)).long())  # unchanged
    first = ds[0]
    assert first["indices"].tolist() == [0, 0, 0, 0, 11]
    assert all(torch.equal(first["frames"][k], first["frames"][3]) for k in range(3))


def test_labels_keep_given_classes_and_inputs_are_masked(index: PreparedIndex) -> None:
    settings = ClipSettings(train=False, gaps=(2, 1))
    ds = ClipDataset(index, "train", [0, 2], settings, mask_classes=[1, 3])
    item = ds[3]  # t = 9 with context 7, 8 (unlabelled) and I_random = 0 (labelled)
    assert item["indices"].tolist() == [7, 8, 9, 0]
    raw = pattern(9, VALUES)
    expected = np.select([raw == 0, raw == 2], [0, 1], 255)  # road -> 0, sky -> 1, rest 255
    assert torch.equal(item["label"], torch.from_numpy(expected).long())
    frame_t = item["frames"][2].permute(1, 2, 0).numpy()
    hidden = np.isin(raw, [1, 3])
    assert hidden.any() and (frame_t[hidden] == MEAN_RGB).all()
    assert np.array_equal(frame_t[~hidden], _image(index, "walk", 9)[~hidden])
    for k, j in ((0, 7), (1, 8)):  # unlabelled context frames cannot be masked
        assert torch.equal(item["frames"][k], _chw(_image(index, "walk", j)))
    rand = item["random"].permute(1, 2, 0).numpy()  # masked with its own label
    assert (rand[np.isin(pattern(0, VALUES), [1, 3])] == MEAN_RGB).all()
    keep = ClipSettings(train=False, gaps=(2, 1), mask_input=False)
    intact = ClipDataset(index, "train", [0, 2], keep, mask_classes=[1, 3])[3]
    assert torch.equal(intact["frames"][2], _chw(_image(index, "walk", 9)))
    assert torch.equal(intact["label"], item["label"])


def _aligned_fraction(frame: torch.Tensor, label: torch.Tensor) -> float:
    """Share of the label's interior pixels whose frame colour is their class's colour.

    Interior: the 3x3 neighbourhood has one class and lies inside the output (bilinear
    resampling blends colours across class borders and the crop's border, nearest does not).
    """
    img = frame.permute(1, 2, 0).numpy().astype(int)
    lab = label.numpy()
    h, w = lab.shape
    padded = np.pad(lab, 1, constant_values=255)
    inner = lab != 255
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= padded[dy : dy + h, dx : dx + w] == lab
    assert inner.sum() > 20
    diff = np.abs(img[inner] - COLORS[lab[inner]].astype(int)).max(axis=1)
    return float((diff <= 12).mean())


@pytest.mark.parametrize("crop", [(24, 16), (64, 72), None])
def test_augmentation_keeps_labels_aligned_with_frames(index: PreparedIndex, crop) -> None:
    settings = ClipSettings(crop=crop, scale=(0.6, 1.6), flip=True, jitter=0.0)
    ds = ClipDataset(index, "val", range(4), settings)
    torch.manual_seed(0)
    sizes = set()
    for i in range(24):
        item = ds[i % len(ds)]
        h, w = item["label"].shape
        sizes.add((h, w))
        if crop is not None:
            assert (h, w) == crop and item["frames"].shape[-2:] == crop
        assert _aligned_fraction(item["frames"][-1], item["label"]) > 0.97
        if crop == (64, 72):  # taller than any scaled frame (30 x 1.6 = 48): padded bottom rows
            frame = item["frames"][-1][:, 48:].permute(1, 2, 0)
            assert (item["label"][48:] == 255).all()
            assert (frame == torch.tensor(MEAN_RGB, dtype=torch.uint8)).all()
    if crop is None:
        assert len(sizes) > 1  # random scale without a crop


def test_one_geometry_and_jitter_for_all_frames_of_a_clip(index: PreparedIndex) -> None:
    """A still video: whatever the random draw, the five augmented frames stay identical."""
    ds = ClipDataset(index, "test", range(4), ClipSettings(crop=(20, 20), jitter=0.4))
    torch.manual_seed(1)
    for i in range(8):
        item = ds[i % len(ds)]
        for k in range(4):
            assert torch.equal(item["frames"][k], item["random"])


def test_flips_happen_and_jitter_leaves_labels_alone(index: PreparedIndex) -> None:
    rng = np.random.default_rng(0)
    flips = {
        random_geometry(40, 30, crop=(20, 20), scale=(1, 1), flip=True, rng=rng).flip
        for _ in range(40)
    }
    assert flips == {True, False}
    plain = ClipDataset(index, "val", range(4), ClipSettings(crop=(24, 24), jitter=0.0))
    jittered = ClipDataset(index, "val", range(4), ClipSettings(crop=(24, 24), jitter=0.4))
    torch.manual_seed(3)
    a = plain[5]
    torch.manual_seed(3)
    b = jittered[5]
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["indices"], b["indices"])
    assert not torch.equal(a["frames"], b["frames"])


def test_training_random_frame_is_far_from_t(index: PreparedIndex) -> None:
    ds = ClipDataset(index, "val", range(4), ClipSettings(crop=(16, 16), min_random_distance=4))
    torch.manual_seed(0)
    seen = set()
    for _ in range(10):
        for i in range(len(ds)):
            item = ds[i]
            t, r = item["frame"], int(item["indices"][-1])
            assert abs(r - t) >= 4
            seen.add(r)
    assert len(seen) == 12  # every frame gets drawn at some point
    assert ClipSettings().random_distance == 10 and ClipSettings(gaps=(4, 2)).random_distance == 5


def test_dataloader_workers_and_pickling(index: PreparedIndex) -> None:
    ds = ClipDataset(index, "val", [0, 1], ClipSettings(crop=(16, 24)), mask_classes=[2, 3])
    assert len(pickle.dumps(ds)) < 100_000
    loader = make_loader(ds, batch_size=4, workers=2)
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 4, 3, 16, 24) and batch["random"].shape == (4, 3, 16, 24)
    assert batch["label"].shape == (4, 16, 24) and set(batch["label"].unique().tolist()) <= {
        0,
        1,
        255,
    }
    assert len(batch["video"]) == 4 and batch["indices"].shape == (4, 5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda i: ClipDataset(i, "val", range(5), EVAL), "class index 4 is out of range"),
        (lambda i: ClipDataset(i, "val", [0, 0], EVAL), "given twice"),
        (lambda i: ClipDataset(i, "val", [], EVAL), "no class"),
        (
            lambda i: ClipDataset(i, "val", [0, 1], EVAL, mask_classes=[1]),
            "class 1 (person) is both",
        ),
        (lambda i: ClipDataset(i, "dev", [0], EVAL), "unknown split 'dev'"),
        (lambda i: ClipSettings(gaps=(3, 6)), "farthest first"),
        (lambda i: ClipSettings(crop=(0, 10)), "crop must be"),
        (lambda i: ClipSettings(scale=(2.0, 1.0)), "scale must be"),
        (lambda i: ClipSettings(jitter=1.5), "jitter must be"),
    ],
)
def test_bad_arguments(index: PreparedIndex, make, message: str) -> None:
    with pytest.raises(OvsegError) as exc:
        make(index)
    assert message in str(exc.value)


def test_split_without_labels_is_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", frames=2)
    for mask in root.glob("*/masks/*.png"):
        mask.unlink()
    idx = prepare("folder", root, tmp_path / "out").index
    with pytest.raises(OvsegError, match="no labelled frames in the val split"):
        ClipDataset(idx, "val", [0], EVAL)
