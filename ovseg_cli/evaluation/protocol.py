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

``evaluate_predictions`` scores masks already written (``ovseg eval --predictions``; how
they are found is ``predictions``' business) through the same counts, examples and sums.

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
from ovseg_cli.classes import UNLABELLED, ClassSpec, colors_for, read_classes_file, readable
from ovseg_cli.config import EvalConfig, SegmentConfig
from ovseg_cli.datasets.index import Frame, PreparedIndex, Video, check_files
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.evaluation.metrics import ConfusionMatrix, VideoConsistency
from ovseg_cli.evaluation.predictions import Predictions, read_frames
from ovseg_cli.segment.protocol import Segmenter
from ovseg_cli.segment.stream import SegmentationStream, StreamSettings
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


def eval_selection(index: PreparedIndex, cfg: EvalConfig) -> tuple[list[int], list[Video]]:
    """The evaluated classes and videos; OvsegError when there are none."""
    classes = evaluated_classes(index, cfg.split)
    if not classes:
        raise OvsegError(f"the dataset has no {cfg.split} classes (see its index.json split)")
    videos = [v for v in index.videos_in(cfg.data_split)[: cfg.limit_videos] if v.labelled]
    if not videos:
        raise OvsegError(f"no labelled videos in the {cfg.data_split} split of {index.path}")
    return classes, videos


def check_eval_inputs(
    index: PreparedIndex, cfg: EvalConfig
) -> tuple[list[int], list[Video], list[ClassSpec]]:
    """The evaluated classes, videos and class prompts; OvsegError for what cannot be
    evaluated (no such classes or videos, missing files, a bad classes file), before any
    model is loaded."""
    classes, videos = eval_selection(index, cfg)
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
        prompts = spec.texts if spec else (readable(name),)
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
        counts = self.all.counts(pred, gt)  # counted once, added to both
        self.all.matrix += counts
        self.kinds[kind].matrix += counts
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
        self, video: str, frame: Frame, mask: np.ndarray, gt: np.ndarray, labelled: int,
        rgb: np.ndarray | None,
    ) -> None:  # fmt: skip
        if self.folder is None:
            return
        stem = Path(frame.image).stem
        if self.masks:
            path = self.folder / "masks" / video / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_palette_png(mask, self.palette, path)
        if labelled in self.wanted:  # numbered over all videos: the same under torchrun
            rgb = read_image(frame.image) if rgb is None else rgb  # scored masks: read it
            if rgb.shape[:2] != gt.shape:
                raise OvsegError(f"{frame.label}: label size differs from its frame {frame.image}")
            folder = self.folder / "examples"
            n = self.wanted.index(labelled)
            self.saved.append(_save_example(folder, video, n, rgb, mask, gt, self.colors))


class _Scoring:
    """What evaluating a model and scoring written masks share: the counts, the examples
    and masks written, the numbering of labelled frames, the sums over a torchrun job's
    ranks and the result."""

    def __init__(
        self, index: PreparedIndex, cfg: EvalConfig, classes: list[int], videos: list[Video],
        colors: Any, device: Any, out_dir: Path | None,
    ) -> None:  # fmt: skip
        self.index, self.cfg, self.classes, self.videos = index, cfg, classes, videos
        self.lut = np.full(256, UNLABELLED, np.uint8)  # dataset class -> evaluated position
        self.lut[classes] = np.arange(len(classes), dtype=np.uint8)
        self.scores = Scores(len(classes), cfg.vc, device)
        total = sum(len(v.labelled) for v in videos)
        wanted = sorted({int(i) for i in np.linspace(0, total - 1, cfg.examples).round()})
        self.output = _Output(
            out_dir, cfg.masks, wanted if cfg.examples else [], palette_bytes(colors), colors
        )
        self.first = np.cumsum([0] + [len(v.labelled) for v in videos])  # each video's first
        self.number = 0  # of the next labelled frame, over all videos
        self.frames = self.labelled = 0

    def start_video(self, i: int) -> None:
        """Video ``i`` of ``videos`` comes next."""
        self.number = int(self.first[i])

    def add(
        self, video: Video, frame: Frame, mask: np.ndarray, raw: np.ndarray, keyframe: bool,
        rgb: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Score one labelled frame (prediction in evaluated positions, raw label) and write
        its mask and example if wanted (``rgb``: the frame, read from the dataset if None)."""
        gt = self.lut[raw]
        self.scores.add(mask, gt, raw, keyframe)
        self.output.frame(video.name, frame, mask, gt, self.number, rgb)
        self.labelled += 1
        self.number += 1

    def end_video(self) -> None:
        """The current video is done: the next frames start a new one (VC windows)."""
        self.scores.vc.end_video()

    def run(
        self, work: Callable[[Sequence[int]], tuple[int, dict[str, Any]]],
        ctx: dist.DistContext,
    ) -> EvalResult:  # fmt: skip
        """Score this rank's share of the videos with ``work`` (which returns the number of
        its last video and that video's stream settings) and sum the counts over the ranks."""
        t0 = time.perf_counter()
        try:
            last = work(range(ctx.rank, len(self.videos), ctx.world))
        except Exception:
            dist.any_true(True, ctx)  # tell the other ranks, or they would wait in the sums
            raise
        if dist.any_true(False, ctx):
            raise OvsegError("the evaluation failed on another rank (see its error)")
        self.scores.all_reduce(ctx)
        counts = dist.total(torch.tensor([self.frames, self.labelled], device=ctx.device), ctx)
        frames, labelled = counts.tolist()
        seconds = dist.maximum(time.perf_counter() - t0, ctx)
        stream = max(dist.gather(last, ctx), key=lambda x: x[0])[1]  # the last video's
        return self._result(frames, labelled, seconds, stream)

    def _result(
        self, frames: int, labelled: int, seconds: float, stream: dict[str, Any]
    ) -> EvalResult:
        cfg, index, classes, scores = self.cfg, self.index, self.classes, self.scores
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
            metrics=metrics, vc=scores.vc.compute(), videos=len(self.videos), frames=frames,
            labelled=labelled, seconds=seconds, subsets=subsets, by_kind=scores.by_kind(),
            vc_windows=dict(scores.vc.counts), stream=stream, examples=self.output.saved,
        )  # fmt: skip


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
    scoring = _Scoring(index, cfg, classes, videos, vocabulary.colors, model.device, out_dir)
    return scoring.run(
        lambda mine: _score_videos(scoring, mine, model, vocabulary, seg, on_frame), ctx
    )


def _score_videos(
    scoring: _Scoring, mine: Sequence[int], model: Segmenter, vocabulary: Any,
    seg: SegmentConfig, on_frame: Callable[[], None] | None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Stream and score the videos numbered ``mine``: (number of the last video, its stream
    settings)."""
    cfg = scoring.cfg
    last: tuple[int, dict[str, Any]] = (-1, {})
    for i in mine:
        video = scoring.videos[i]
        scoring.start_video(i)
        run = video.frames if cfg.unlabelled else [f for f in video.frames if f.label]
        source = ImageSequence([f.image for f in run])
        short = cfg.size or min(source.info.width, source.info.height)
        settings = StreamSettings.from_config(seg, size=short)
        labels = Prefetcher(_labels(run), depth=8, name="ovseg-eval-labels")
        try:
            with SegmentationStream(source, vocabulary, model, settings) as stream:
                for result, raw in zip(stream, labels, strict=True):
                    scoring.frames += 1
                    if raw is not None:
                        frame = run[result.index]
                        if raw.shape != result.mask.shape:
                            raise OvsegError(
                                f"{frame.label}: label size differs from its frame {frame.image}"
                            )
                        scoring.add(
                            video, frame, result.mask, raw, result.is_keyframe, result.frame
                        )
                    if on_frame is not None:
                        on_frame()
                last = (i, {**stream.describe(), "shot_threshold": stream.shot_threshold})
        finally:
            labels.close()
        scoring.end_video()
    return last


def evaluate_predictions(
    predictions: Predictions,
    index: PreparedIndex,
    cfg: EvalConfig,
    *,
    on_frame: Callable[[], None] | None = None,
    out_dir: Path | None = None,
    ctx: dist.DistContext | None = None,
) -> EvalResult:
    """Score masks already written (``ovseg eval --predictions``, found by
    ``predictions.find_predictions``) as ``evaluate`` scores a model's: the same counts,
    examples and sums over a torchrun job's ranks; only the labelled frames are read."""
    ctx = ctx or dist.DistContext()
    classes = evaluated_classes(index, cfg.split)
    found = predictions.videos
    colors = colors_for(class_specs(index, classes, None))
    videos = [vp.video for vp in found]
    scoring = _Scoring(index, cfg, classes, videos, colors, ctx.device, out_dir)

    def work(mine: Sequence[int]) -> tuple[int, dict[str, Any]]:
        share = [found[i] for i in mine]
        current = -1
        for k, i, pred, raw in read_frames(share):
            if k != current:
                if current >= 0:
                    scoring.end_video()
                scoring.start_video(mine[k])
                current = k
            vp = share[k]
            scoring.frames += 1
            scoring.add(vp.video, vp.video.frames[i], pred, raw, vp.is_keyframe(i))
            if on_frame is not None:
                on_frame()
        scoring.end_video()
        return (mine[-1] if len(mine) else -1), {}

    return scoring.run(work, ctx)


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
