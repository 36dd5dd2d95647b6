"""The clip sampler of OV2VSS (III, Eq. 1): ``([I_{t-k1}, ..., I_{t-kn}, I_t, I_random], G_t)``.

One item per labelled frame t of a split. The context frames are ``gaps`` frames before t
(farthest first; near the start of a video the first frame is repeated). ``I_random`` is,
in training, a random frame of the same video at least ``min_random_distance`` frames from t
(the farthest frame when none is that far) and, at evaluation, the most distant frame of the
video (the first one on a tie). Training applies one random scale, crop and flip to all
five frames and the label, and one photometric jitter to the frames; evaluation returns
them at their original size.

The open-vocabulary protocol (IV-C): labels keep only ``classes`` (class ``classes[k]``
becomes k, every other class 255), and with ``mask_input`` the pixels of ``mask_classes``
are painted with the mean colour (CLIP's, which normalises to ~0) in every input frame that
has a label (G_t for I_t, the other frames' own labels for them). Training passes the seen
classes and masks the unseen ones; evaluation passes all classes and masks nothing.

Random draws come from torch's generator, which DataLoader seeds per worker and epoch, so
workers never repeat each other and ``torch.manual_seed`` makes runs reproducible. Given a
``seed`` and keys ``(epoch, i)`` (``ovseg train`` does this), they come from (seed, epoch, i)
alone, whatever the worker: a resumed run then sees exactly the clips it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ovseg_cli.config import setting
from ovseg_cli.datasets.augment import (
    Geometry,
    draw_jitter,
    mask_pixels,
    random_geometry,
    warp,
)
from ovseg_cli.datasets.index import IGNORE_INDEX, PreparedIndex, check_split
from ovseg_cli.errors import OvsegError


@dataclass
class ClipSettings:
    """How clips are sampled and augmented (training or evaluation)."""

    gaps: tuple[int, ...] = setting(
        (9, 6, 3), "Distances in frames of the context frames before t, farthest first (IV-B)."
    )
    crop: tuple[int, int] | None = setting(
        (480, 480), "Training crop (height, width), padded where the scaled frame is smaller."
    )
    scale: tuple[float, float] = setting((0.5, 2.0), "Range of the random training scale factor.")
    flip: bool = setting(True, "Random horizontal flip in training.")
    jitter: float = setting(
        0.2, "Training brightness/saturation/contrast jitter: factors in [1-x, 1+x]; 0 disables."
    )
    mask_input: bool = setting(
        True, "Paint the pixels of masked (unseen) classes with the mean colour in input frames."
    )
    min_random_distance: int | None = setting(
        None, "Least distance in frames from t of the training I_random (default: largest gap + 1)."
    )
    train: bool = setting(
        True, "Training sampling (random augmentation and I_random); false: evaluation."
    )

    def __post_init__(self) -> None:
        gaps = tuple(int(g) for g in self.gaps)
        if any(g < 1 for g in gaps) or list(gaps) != sorted(set(gaps), reverse=True):
            raise OvsegError(
                f"gaps must be distinct positive frame distances, farthest first, not {self.gaps}"
            )
        self.gaps = gaps
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise OvsegError(f"crop must be (height, width) in pixels, not {self.crop}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise OvsegError(f"scale must be (low, high) with 0 < low <= high, not {self.scale}")
        if not 0 <= self.jitter < 1:
            raise OvsegError(f"jitter must be in [0, 1), not {self.jitter}")
        if self.min_random_distance is not None and self.min_random_distance < 0:
            raise OvsegError(f"min_random_distance must be >= 0, not {self.min_random_distance}")

    @property
    def random_distance(self) -> int:
        """The least training distance of I_random from t."""
        if self.min_random_distance is not None:
            return self.min_random_distance
        return (max(self.gaps) if self.gaps else 0) + 1


def context_indices(t: int, gaps: Sequence[int]) -> list[int]:
    """Indices of [I_{t-k1}, ..., I_{t-kn}, I_t]; before the video's start, its first frame."""
    return [max(t - g, 0) for g in gaps] + [t]


def farthest_index(t: int, n: int) -> int:
    """The frame of an n-frame video most distant from t (the first one on a tie)."""
    return 0 if t >= n - 1 - t else n - 1


def random_index(t: int, n: int, distance: int, rng: np.random.Generator) -> int:
    """A uniformly random frame at least ``distance`` from t, or the farthest when none is."""
    before = max(0, t - distance + 1)  # frames 0 .. t-distance
    after = max(0, n - (t + distance))  # frames t+distance .. n-1
    if before + after == 0:
        return farthest_index(t, n)
    r = int(rng.integers(0, before + after))
    return r if r < before else t + distance + (r - before)


def _load_frame(
    path: str, size: tuple[int, int], geom: Geometry, color: tuple[float, float, float] | None
) -> np.ndarray:
    with Image.open(path) as img:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if rgb.size != size:  # prep checks sizes; an index from elsewhere may not have
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return warp(rgb, geom, label=False, color=color)


def _class_list(values: Sequence[int], n: int, what: str) -> list[int]:
    out = [int(c) for c in values]
    bad = [c for c in out if not 0 <= c < n]
    if bad:
        raise OvsegError(f"{what}: class index {bad[0]} is out of range (0..{n - 1})")
    if len(set(out)) != len(out):
        raise OvsegError(f"{what}: a class is given twice")
    return out


class ClipDataset(Dataset):
    """Items ``{"frames", "random", "label", "video", "frame", "indices"}`` for each labelled frame.

    ``frames``: uint8 (len(gaps) + 1, 3, H, W) = [I_{t-9}, I_{t-6}, I_{t-3}, I_t];
    ``random``: uint8 (3, H, W) = I_random; ``label``: int64 (H, W), ``classes[k]`` -> k,
    everything else 255; ``video``: the video's name; ``frame``: t, the index of I_t in the
    video; ``indices``: int64 (len(gaps) + 2,) = the frame indices used (context, t, random).
    """

    def __init__(
        self,
        index: PreparedIndex,
        split: str,
        classes: Sequence[int],
        settings: ClipSettings | None = None,
        *,
        mask_classes: Sequence[int] = (),
        seed: int | None = None,
    ) -> None:
        check_split(split)
        self.seed = seed
        n = len(index.classes)
        self.settings = settings or ClipSettings()
        self.classes = _class_list(classes, n, "classes")
        if not self.classes:
            raise OvsegError("classes: no class to learn or evaluate")
        self.mask_classes = _class_list(mask_classes, n, "mask_classes")
        both = set(self.classes) & set(self.mask_classes)
        if both:
            c = min(both)
            raise OvsegError(f"class {c} ({index.classes[c]}) is both a target and masked")
        self.class_names = [index.classes[c] for c in self.classes]
        self.split = split
        # plain lists of strings: cheap to pickle into DataLoader workers, no open files
        self.videos: list[tuple[str, list[str], list[str | None]]] = [
            (v.name, [f.image for f in v.frames], [f.label for f in v.frames])
            for v in index.videos_in(split)
        ]
        self.items: list[tuple[int, int]] = [
            (vi, t)
            for vi, (_, _, labels) in enumerate(self.videos)
            for t, lab in enumerate(labels)
            if lab is not None
        ]
        if not self.items:
            raise OvsegError(f"no labelled frames in the {split} split of {index.path}")
        self.target_lut = np.full(256, IGNORE_INDEX, np.uint8)
        self.target_lut[self.classes] = np.arange(len(self.classes), dtype=np.uint8)
        self.masked = np.zeros(256, bool)
        self.masked[self.mask_classes] = True
        self.masking = self.settings.mask_input and bool(self.mask_classes)

    def __len__(self) -> int:
        return len(self.items)

    def indices(self, i: int, rng: np.random.Generator | None = None) -> list[int]:
        """Frame indices of item i: the context frames, t, then I_random."""
        vi, t = self.items[i]
        n = len(self.videos[vi][1])
        s = self.settings
        if s.train and rng is not None:
            rand = random_index(t, n, s.random_distance, rng)
        else:
            rand = farthest_index(t, n)
        return [*context_indices(t, s.gaps), rand]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item i; a key ``(epoch, i)`` with ``seed`` set draws its randomness from
        (seed, epoch, i) alone, so a resumed run sees exactly the clips it would have."""
        epoch, i = key if isinstance(key, tuple) else (None, key)
        vi, t = self.items[i]
        name, images, labels = self.videos[vi]
        s = self.settings
        rng = None
        if s.train:
            if self.seed is not None and epoch is not None:
                rng = np.random.default_rng([self.seed, epoch, i])
            else:
                rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        idx = self.indices(i, rng)
        with Image.open(images[t]) as first:
            width, height = first.size
        color = None
        if rng is not None:
            geom = random_geometry(width, height, crop=s.crop, scale=s.scale, flip=s.flip, rng=rng)
            color = draw_jitter(s.jitter, rng)
        else:
            geom = Geometry.identity(width, height)
        frames = np.empty((len(idx), geom.canvas[1], geom.canvas[0], 3), np.uint8)
        frame_labels: dict[int, np.ndarray] = {}
        done: dict[int, int] = {}  # frame index -> slot already decoded (repeats near the start)
        for k, j in enumerate(idx):
            if j in done:
                frames[k] = frames[done[j]]
                continue
            done[j] = k
            frames[k] = _load_frame(images[j], (width, height), geom, color)
            if labels[j] is not None and (j == t or self.masking):
                with Image.open(labels[j]) as lab:
                    frame_labels[j] = warp(lab, geom, label=True)
        if self.masking:  # after the jitter, so masked pixels are exactly the mean colour
            for k, j in enumerate(idx):
                if j in frame_labels:
                    mask_pixels(frames[k], frame_labels[j], self.masked)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        label = torch.from_numpy(np.take(self.target_lut, frame_labels[t]).astype(np.int64))
        return {
            "frames": x[:-1],
            "random": x[-1],
            "label": label,
            "video": name,
            "frame": t,
            "indices": torch.tensor(idx, dtype=torch.int64),
        }


def make_loader(
    dataset: ClipDataset,
    batch_size: int,
    *,
    workers: int | None = None,
    shuffle: bool | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with worker processes; shuffles and drops the last batch when training.

    At evaluation frames keep their original size, so batches need equal-size videos
    (or ``batch_size=1``).
    """
    train = dataset.settings.train
    n = min(8, os.cpu_count() or 1) if workers is None else workers
    options: dict[str, Any] = {
        "shuffle": train if shuffle is None else shuffle,
        "drop_last": train,
        "num_workers": n,
        "persistent_workers": n > 0,
        "pin_memory": torch.cuda.is_available(),
        **kwargs,
    }
    if n > 0:
        options.setdefault("prefetch_factor", 4)
    return DataLoader(dataset, batch_size=batch_size, **options)
