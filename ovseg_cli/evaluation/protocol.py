"""Evaluation under the paper's open-vocabulary protocol (IV-C) on a prepared dataset.

``--split unseen``: the model is given only the unseen class names and scored on the pixels
whose ground truth is an unseen class; ``seen`` likewise; ``all``: every class name, with
mIoU reported over the seen classes, the unseen classes and their harmonic mean. Pixels
whose ground truth is outside the evaluated classes, or ignored (255, where ``ovseg prep``
puts void and VSPW's "others"), are never scored.

Frames go through the same streaming path as ``segment``, video by video in temporal
order (unlabelled frames too, as temporal context), at the original size by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ovseg_cli.classes import ClassSpec, read_classes_file
from ovseg_cli.config import EvalConfig
from ovseg_cli.datasets.index import IGNORE_INDEX, PreparedIndex, Video, check_files
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.evaluation.metrics import ConfusionMatrix, VideoConsistency
from ovseg_cli.segment.stream import logits_to_mask
from ovseg_cli.threads import Prefetcher


def evaluated_classes(index: PreparedIndex, split: str) -> list[int]:
    """Class indices given to the model for an evaluation split."""
    if split == "seen":
        return list(index.seen)
    if split == "unseen":
        return list(index.unseen)
    return list(range(len(index.classes)))


def class_specs(
    index: PreparedIndex, classes: Sequence[int], classes_file: str | None
) -> list[ClassSpec]:
    """Prompts for dataset classes: from a classes file by name, else the readable name."""
    names = [index.classes[c] for c in classes]
    given: dict[str, ClassSpec] = {}
    if classes_file:
        for spec in read_classes_file(classes_file):
            if spec.name not in index.classes:
                raise OvsegError(
                    f"{classes_file}: {spec.name!r} is not a class of this dataset"
                    + did_you_mean(spec.name, index.classes)
                )
            given[spec.name] = spec
    out = []
    for name in names:
        spec = given.get(name)
        readable = " ".join(name.replace("_", " ").split())  # VSPW spells "Playground_slide"
        prompts = spec.texts if spec else (readable,)
        out.append(ClassSpec(name=name, prompts=tuple(prompts), color=spec.color if spec else None))
    return out


@dataclass
class EvalResult:
    """Metrics of one evaluation and what they were computed on."""

    split: str
    classes: list[int]
    names: list[str]
    metrics: dict[str, Any]
    vc: dict[int, float]
    videos: int
    frames: int
    labelled: int
    seconds: float
    subsets: dict[str, float] = field(default_factory=dict)  # seen/unseen/hmean mIoU for "all"
    examples: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second of the whole evaluation."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _subset_miou(iou: Sequence[float], members: Sequence[int]) -> float:
    vals = [iou[i] for i in members if not np.isnan(iou[i])]
    return float(np.mean(vals)) if vals else float("nan")


def _frames(
    model: Any, video: Video, size: int | None
) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray | None]]:
    """(prepared image, RGB frame, label) per frame of a video, read in a background thread."""
    for frame in video.frames:
        rgb = _read_image(frame.image, "RGB")
        label = None
        if frame.label is not None:
            label = _read_image(frame.label, None)
            if label.shape != rgb.shape[:2]:
                raise OvsegError(f"{frame.label}: label size differs from its frame {frame.image}")
        yield model.prepare(rgb, size or min(rgb.shape[:2])), rgb, label


def _read_image(path: str, mode: str | None) -> np.ndarray:
    """An image file as an array, with a one-line error for a missing or broken file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert(mode) if mode else img)
    except (OSError, UnidentifiedImageError) as exc:
        raise OvsegError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _check_memory(model: Any, videos: Sequence[Video], classes: int, size: int | None) -> None:
    from ovseg_cli.memory import available_device_bytes, available_host_bytes, check_fits

    for video in videos:
        if video.size is None:
            continue
        w, h = video.size
        need = model.memory_estimate(h, w, 1, classes, size or min(h, w))
        free = available_device_bytes(model.device) or available_host_bytes()
        advice = "pass a smaller --size" + ("" if size else " (the default is the frame's own)")
        check_fits(need, free, f"evaluating {w}x{h} frames of {video.name}", advice)


def evaluate(
    model: Any,
    index: PreparedIndex,
    cfg: EvalConfig,
    *,
    on_frame: Callable[[], None] | None = None,
    examples_dir: Path | None = None,
) -> EvalResult:
    """Stream the chosen videos through a segmenter and score them (see the module doc)."""
    classes = evaluated_classes(index, cfg.split)
    if not classes:
        raise OvsegError(f"the dataset has no {cfg.split} classes (see its index.json split)")
    videos = index.videos_in(cfg.data_split)[: cfg.limit_videos]
    videos = [v for v in videos if v.labelled]
    if not videos:
        raise OvsegError(f"no labelled videos in the {cfg.data_split} split of {index.path}")
    check_files(index, videos)
    _check_memory(model, videos, len(classes), cfg.size)
    vocabulary = model.encode_vocabulary(class_specs(index, classes, cfg.classes_file))
    lut = np.full(256, IGNORE_INDEX, np.uint8)  # dataset class -> position in the vocabulary
    lut[classes] = np.arange(len(classes), dtype=np.uint8)
    conf = ConfusionMatrix(len(classes), device=model.device)
    vc = VideoConsistency(cfg.vc)
    total_labelled = sum(len(v.labelled) for v in videos)
    wanted = (
        set(np.linspace(0, total_labelled - 1, cfg.examples).round().astype(int))
        if cfg.examples
        else set()
    )
    saved: list[Path] = []
    frames = labelled = 0
    t0 = time.perf_counter()
    for video in videos:
        state = model.init_state()
        reader = Prefetcher(_frames(model, video, cfg.size), depth=4, name="ovseg-eval-reader")
        try:
            for image, rgb, label in reader:
                logits, state = model.step(image, state, vocabulary)
                frames += 1
                if label is None:
                    vc.gap()
                else:
                    pred = logits_to_mask(logits, label.shape)
                    gt = lut[label]
                    conf.update(torch.from_numpy(pred), torch.from_numpy(gt))
                    vc.add(pred, gt)
                    if labelled in wanted and examples_dir is not None:
                        saved.append(
                            _save_example(
                                examples_dir,
                                video.name,
                                len(saved),
                                rgb,
                                pred,
                                gt,
                                vocabulary.colors,
                            )
                        )
                    labelled += 1
                if on_frame is not None:
                    on_frame()
        finally:
            reader.close()
        vc.end_video()
    seconds = time.perf_counter() - t0
    metrics = conf.compute()
    subsets: dict[str, float] = {}
    if cfg.split == "all":
        pos = {c: i for i, c in enumerate(classes)}
        seen = _subset_miou(metrics["iou"], [pos[c] for c in index.seen])
        unseen = _subset_miou(metrics["iou"], [pos[c] for c in index.unseen])
        hmean = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else float("nan")
        subsets = {"seen": seen, "unseen": unseen, "hmean": hmean}
    return EvalResult(
        split=cfg.split,
        classes=classes,
        names=[index.classes[c] for c in classes],
        metrics=metrics,
        vc=vc.compute(),
        videos=len(videos),
        frames=frames,
        labelled=labelled,
        seconds=seconds,
        subsets=subsets,
        examples=saved,
    )


def _save_example(
    folder: Path, video: str, n: int, rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, colors: Any
) -> Path:
    """frame | prediction | ground truth side by side (ignored pixels black)."""
    folder.mkdir(parents=True, exist_ok=True)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    row = np.concatenate([rgb, lut[pred], lut[gt]], axis=1)
    path = folder / f"{n:02d}_{video}.png"
    Image.fromarray(row).save(path)
    return path
