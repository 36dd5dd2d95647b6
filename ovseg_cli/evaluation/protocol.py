"""Evaluation under the paper's open-vocabulary protocol (IV-C) on a prepared dataset.

``--split unseen``: the model is given only the unseen class names and scored on the pixels
whose ground truth is an unseen class; ``seen`` likewise; ``all``: every class name, with
mIoU reported over the seen classes, the unseen classes and their harmonic mean. Pixels
whose ground truth is outside the evaluated classes, or ignored (255, where ``ovseg prep``
puts void and VSPW's "others"), are never scored.

Each video's frames go through the very ``SegmentationStream`` that `segment` runs (the
same keyframe choice, optical-flow propagation, batching, shot detection and threshold),
unlabelled frames too, as temporal context, in temporal order, at each frame's own size by
default (IV-B). Keyframes and propagated frames are also scored apart, so the accuracy
cost of ``--keyframe-interval`` is one command away.

Under torchrun each rank takes videos i with i % world == rank and the counts (confusion
matrices, VC windows) are summed over the ranks, so every rank ends with the numbers one
process would have found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg_cli import distributed as dist
from ovseg_cli.classes import UNLABELLED, ClassSpec, read_classes_file
from ovseg_cli.config import EvalConfig, SegmentConfig
from ovseg_cli.datasets.index import Frame, PreparedIndex, Video, check_files
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.evaluation.metrics import ConfusionMatrix, VideoConsistency
from ovseg_cli.segment.protocol import Segmenter
from ovseg_cli.segment.stream import FrameResult, SegmentationStream, StreamSettings
from ovseg_cli.threads import Prefetcher
from ovseg_cli.video.images import ImageSequence, read_image
from ovseg_cli.video.rendering import palette_bytes, save_palette_png

FRAME_KINDS = ("keyframes", "propagated")


def evaluated_classes(index: PreparedIndex, split: str) -> list[int]:
    """Class indices given to the model for an evaluation split."""
    if split == "seen":
        return list(index.seen)
    if split == "unseen":
        return list(index.unseen)
    return list(range(len(index.classes)))


def check_eval_inputs(
    index: PreparedIndex, cfg: EvalConfig
) -> tuple[list[int], list[Video], list[ClassSpec]]:
    """The evaluated classes, videos and class prompts; OvsegError for what cannot be
    evaluated (no such classes or videos, missing files, a bad classes file), before any
    model is loaded."""
    classes = evaluated_classes(index, cfg.split)
    if not classes:
        raise OvsegError(f"the dataset has no {cfg.split} classes (see its index.json split)")
    videos = [v for v in index.videos_in(cfg.data_split)[: cfg.limit_videos] if v.labelled]
    if not videos:
        raise OvsegError(f"no labelled videos in the {cfg.data_split} split of {index.path}")
    check_files(index, videos)
    return classes, videos, class_specs(index, classes, cfg.classes_file)


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
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)  # keyframes / propagated
    vc_windows: dict[int, int] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)  # keyframe and shot settings
    examples: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second of the whole evaluation."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _subset_miou(iou: Sequence[float], members: Sequence[int]) -> float:
    vals = [iou[i] for i in members if not np.isnan(iou[i])]
    return float(np.mean(vals)) if vals else float("nan")


class Scores:
    """Everything counted over the labelled frames: all, keyframes apart, propagated apart."""

    def __init__(self, classes: int, vc: Sequence[int], device: Any = "cpu") -> None:
        self.all = ConfusionMatrix(classes, device)
        self.kinds = {k: ConfusionMatrix(classes, device) for k in FRAME_KINDS}
        self.frames = dict.fromkeys(FRAME_KINDS, 0)
        self.vc = VideoConsistency(vc)

    def add(self, pred: np.ndarray, gt: np.ndarray, raw: np.ndarray, keyframe: bool) -> None:
        """One labelled frame: prediction, ground truth in vocabulary indices, raw labels."""
        kind = FRAME_KINDS[0] if keyframe else FRAME_KINDS[1]
        self.all.update(pred, gt)
        self.kinds[kind].update(pred, gt)
        self.frames[kind] += 1
        self.vc.add(pred, raw)

    def merge(self, other: Scores) -> None:
        """Add another process's counts."""
        self.all.merge(other.all)
        for k in FRAME_KINDS:
            self.kinds[k].merge(other.kinds[k])
            self.frames[k] += other.frames[k]
        self.vc.merge(other.vc)

    def all_reduce(self, ctx: dist.DistContext) -> None:
        """Sum the counts of every rank of a torchrun job, in place (alone: nothing to do)."""
        if not ctx.distributed:
            return
        device = self.all.matrix.device
        for conf in (self.all, *self.kinds.values()):
            dist.total(conf.matrix, ctx)
        windows = self.vc.windows
        counts = [self.frames[k] for k in FRAME_KINDS] + [self.vc.counts[n] for n in windows]
        counts_t = dist.total(torch.tensor(counts, dtype=torch.int64, device=device), ctx)
        sums_t = dist.total(
            torch.tensor([self.vc.sums[n] for n in windows], dtype=torch.float64, device=device),
            ctx,
        )
        values = counts_t.tolist()
        self.frames = dict(zip(FRAME_KINDS, values[: len(FRAME_KINDS)], strict=True))
        self.vc.counts = dict(zip(windows, values[len(FRAME_KINDS) :], strict=True))
        self.vc.sums = dict(zip(windows, sums_t.tolist(), strict=True))

    def by_kind(self) -> dict[str, dict[str, Any]]:
        """Frames and the four metrics for keyframes and propagated frames apart."""
        out = {}
        for kind, conf in self.kinds.items():
            m = conf.compute()
            out[kind] = {"frames": self.frames[kind], **{k: m[k] for k in ("mIoU", "pAcc")}}
        return out


def _labels(frames: Sequence[Frame]) -> Iterator[np.ndarray | None]:
    """Each frame's label map (None where unlabelled), read ahead in a background thread."""
    for frame in frames:
        yield None if frame.label is None else read_image(frame.label, None)


def check_memory(model: Segmenter, videos: Sequence[Video], classes: int, size: int | None) -> None:
    """Refuse, before any work, a --size whose memory would exceed what is available."""
    from ovseg_cli.memory import available_device_bytes, available_host_bytes, check_fits

    for video in videos:
        if video.size is None:
            continue
        w, h = video.size
        need = model.memory_estimate(h, w, 1, classes, size or min(h, w))
        free = available_device_bytes(model.device) or available_host_bytes()
        advice = "pass a smaller --size" + ("" if size else " (the default is the frame's own)")
        check_fits(need, free, f"evaluating {w}x{h} frames of {video.name}", advice)


@dataclass
class _Output:
    """Where an evaluation writes frames: predicted masks and example images."""

    folder: Path | None
    masks: bool
    wanted: list[int]  # labelled-frame numbers to save as examples, in order
    palette: bytes
    colors: Any
    saved: list[Path] = field(default_factory=list)

    def frame(
        self, video: str, frame: Frame, result: FrameResult, gt: np.ndarray, labelled: int
    ) -> None:
        if self.folder is None:
            return
        stem = Path(frame.image).stem
        if self.masks:
            path = self.folder / "masks" / video / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_palette_png(result.mask, self.palette, path)
        if labelled in self.wanted:  # numbered over all videos: the same under torchrun
            folder = self.folder / "examples"
            n = self.wanted.index(labelled)
            example = _save_example(folder, video, n, result.frame, result.mask, gt, self.colors)
            self.saved.append(example)


def evaluate(
    model: Segmenter,
    index: PreparedIndex,
    cfg: EvalConfig,
    seg: SegmentConfig | None = None,
    *,
    on_frame: Callable[[], None] | None = None,
    out_dir: Path | None = None,
    ctx: dist.DistContext | None = None,
) -> EvalResult:
    """Stream the chosen videos through a segmenter and score them (see the module doc).

    ``seg`` holds the stream's settings (keyframes, batch, shots, threshold); ``out_dir``
    receives ``examples/`` and, with ``cfg.masks``, ``masks/<video>/<frame>.png``; ``ctx``:
    this process's place in a torchrun job (its share of the videos; the counts summed).
    """
    ctx = ctx or dist.DistContext()
    seg = seg or SegmentConfig()
    classes, videos, specs = check_eval_inputs(index, cfg)
    check_memory(model, videos, len(classes), cfg.size)
    vocabulary = model.encode_vocabulary(specs)
    lut = np.full(256, UNLABELLED, np.uint8)  # dataset class -> position in the vocabulary
    lut[classes] = np.arange(len(classes), dtype=np.uint8)
    scores = Scores(len(classes), cfg.vc, model.device)
    total = sum(len(v.labelled) for v in videos)
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, cfg.examples).round()})
    output = _Output(
        out_dir, cfg.masks, wanted if cfg.examples else [], palette_bytes(vocabulary.colors),
        vocabulary.colors,
    )  # fmt: skip
    first = np.cumsum([0] + [len(v.labelled) for v in videos])  # each video's first number
    t0 = time.perf_counter()
    try:
        frames, labelled, last = _score_videos(
            videos, range(ctx.rank, len(videos), ctx.world), first, model, vocabulary, lut,
            scores, output, cfg, seg, on_frame,
        )  # fmt: skip
    except Exception:
        dist.any_true(True, ctx)  # tell the other ranks, or they would wait in the sums below
        raise
    if dist.any_true(False, ctx):
        raise OvsegError("the evaluation failed on another rank (see its error)")
    scores.all_reduce(ctx)
    counts = dist.total(torch.tensor([frames, labelled], device=ctx.device), ctx).tolist()
    seconds = dist.maximum(time.perf_counter() - t0, ctx)
    stream_info = max(dist.gather(last, ctx), key=lambda x: x[0])[1]  # the last video's
    return _result(cfg, index, classes, scores, len(videos), counts[0], counts[1], seconds,
                   stream_info, output.saved)  # fmt: skip


def _score_videos(
    videos: list[Video], mine: Sequence[int], first: Any, model: Segmenter, vocabulary: Any,
    lut: np.ndarray, scores: Scores, output: _Output, cfg: EvalConfig, seg: SegmentConfig,
    on_frame: Callable[[], None] | None,
) -> tuple[int, int, tuple[int, dict[str, Any]]]:  # fmt: skip
    """Stream and score the videos numbered ``mine``: (frames, labelled frames, (number of
    the last video, its stream settings))."""
    frames = labelled = 0
    last: tuple[int, dict[str, Any]] = (-1, {})
    for i in mine:
        video = videos[i]
        number = int(first[i])  # of the video's first labelled frame, over all videos
        run = video.frames if cfg.unlabelled else [f for f in video.frames if f.label]
        source = ImageSequence([f.image for f in run])
        short = cfg.size or min(source.info.width, source.info.height)
        settings = StreamSettings.from_config(seg, size=short)
        labels = Prefetcher(_labels(run), depth=8, name="ovseg-eval-labels")
        try:
            with SegmentationStream(source, vocabulary, model, settings) as stream:
                for result, raw in zip(stream, labels, strict=True):
                    frames += 1
                    if raw is not None:
                        frame = run[result.index]
                        if raw.shape != result.mask.shape:
                            raise OvsegError(
                                f"{frame.label}: label size differs from its frame {frame.image}"
                            )
                        gt = lut[raw]
                        scores.add(result.mask, gt, raw, result.is_keyframe)
                        output.frame(video.name, frame, result, gt, number)
                        labelled += 1
                        number += 1
                    if on_frame is not None:
                        on_frame()
                last = (i, {**stream.describe(), "shot_threshold": stream.shot_threshold})
        finally:
            labels.close()
        scores.vc.end_video()
    return frames, labelled, last


def _result(
    cfg: EvalConfig, index: PreparedIndex, classes: list[int], scores: Scores, videos: int,
    frames: int, labelled: int, seconds: float, stream: dict[str, Any], examples: list[Path],
) -> EvalResult:  # fmt: skip
    metrics = scores.all.compute()
    subsets: dict[str, float] = {}
    if cfg.split == "all":
        pos = {c: i for i, c in enumerate(classes)}
        seen = _subset_miou(metrics["iou"], [pos[c] for c in index.seen])
        unseen = _subset_miou(metrics["iou"], [pos[c] for c in index.unseen])
        hmean = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else float("nan")
        subsets = {"seen": seen, "unseen": unseen, "hmean": hmean}
    return EvalResult(
        split=cfg.split, classes=classes, names=[index.classes[c] for c in classes],
        metrics=metrics, vc=scores.vc.compute(), videos=videos, frames=frames,
        labelled=labelled, seconds=seconds, subsets=subsets, by_kind=scores.by_kind(),
        vc_windows=dict(scores.vc.counts), stream=stream, examples=examples,
    )  # fmt: skip


def _save_example(
    folder: Path, video: str, n: int, rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, colors: Any
) -> Path:
    """frame | prediction | ground truth side by side (ignored and unlabelled pixels black)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    row = np.concatenate([rgb, lut[pred], lut[gt]], axis=1)
    path = folder / f"{n:02d}_{video}.png"
    Image.fromarray(row).save(path)
    return path
