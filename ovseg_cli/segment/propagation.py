"""Keyframes and optical-flow propagation: run the model on a few frames, warp its result to the rest.

Deep Feature Flow (Zhu et al., CVPR 2017) and its successors (DVSNet, CVPR 2018; Accel,
CVPR 2019) run the heavy network on keyframes only and carry its output to the frames in
between with optical flow. Here the flow is OpenCV's DIS (Kroeger et al., ECCV 2016),
computed on grey images at a reduced working resolution, *from* the current frame *to*
the keyframe, so every pixel of the current frame looks up where it was in the keyframe
(backward warping: no holes).

The same functions work on class scores and on label maps:

- ``propagate_scores``: (C, h, w) scores, at their own resolution (the model's, e.g. one
  cell per ViT patch), the flow averaged down to that grid (as DFF warps feature maps at
  feature resolution); bilinear, on the scores' device.
- ``propagate_labels``: (H, W) label maps at any resolution, nearest neighbour.

With a next keyframe too, the two warps are blended per pixel by temporal distance and by
how well each warped keyframe matches the frame (photometric error), and a keyframe on
the other side of a cut is ignored.
"""

from __future__ import annotations

import functools
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ovseg_cli.config import AUTO, SegmentConfig, default_of

if TYPE_CHECKING:  # torch is imported where scores are warped: label maps need none of it
    import torch

FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
BAD_PIXEL = 30  # grey levels: a warped pixel further than this from the frame is mispredicted
CUT_SHARE = 0.4  # mispredicted share above which a keyframe does not show the frame's scene
CONFIDENCE_SCALE = 10.0  # grey levels: each one costs a side exp(-1/10) of its blending weight
ERROR_BLUR = 2.0  # px at the working resolution: single noisy pixels should not flip a blend


@dataclass(frozen=True)
class KeyframeSettings:
    """Which frames run the model, and how the others get their result."""

    # defaults are SegmentConfig's (the one place they are written)
    interval: int | str = default_of(SegmentConfig, "keyframe_interval")  # every Nth, or AUTO
    max_interval: int = default_of(SegmentConfig, "max_interval")  # auto: longest gap
    max_error: float = default_of(SegmentConfig, "keyframe_error")  # auto: warp error to stop
    bidirectional: bool = default_of(SegmentConfig, "bidirectional")  # blend both keyframes
    flow_preset: str = default_of(SegmentConfig, "flow_preset")  # DIS preset
    flow_size: int | None = default_of(SegmentConfig, "flow_size")  # flow's short side

    @classmethod
    def from_config(cls, cfg: SegmentConfig) -> KeyframeSettings:
        """The settings of a ``SegmentConfig``."""
        return cls(
            interval=cfg.keyframe_interval, max_interval=cfg.max_interval,
            max_error=cfg.keyframe_error, bidirectional=cfg.bidirectional,
            flow_preset=cfg.flow_preset, flow_size=cfg.flow_size,
        )  # fmt: skip

    @property
    def auto(self) -> bool:
        """Keyframes chosen by how well the warped keyframe still matches the frame."""
        return self.interval == AUTO

    @property
    def longest_gap(self) -> int:
        """The most frames from one keyframe to the next."""
        return self.max_interval if self.auto else int(self.interval)

    @property
    def propagating(self) -> bool:
        """False when every frame is a keyframe (nothing to propagate)."""
        return self.interval != 1

    def is_keyframe(self, since_key: int, flow: Flow | None = None) -> bool:
        """Whether the frame ``since_key`` frames after the last keyframe starts a new one."""
        if not self.auto:
            return since_key >= int(self.interval)
        return since_key >= self.max_interval or (
            flow is not None and flow.bad_share > self.max_error
        )

    def describe(self) -> dict[str, Any]:
        """The settings for meta.json."""
        return {
            "keyframe_interval": self.interval,
            "max_interval": self.max_interval if self.auto else None,
            "keyframe_error": self.max_error if self.auto else None,
            "bidirectional": self.bidirectional,
            "flow": {"method": "DIS (OpenCV)", "preset": self.flow_preset, "size": self.flow_size},
            "scores": "keyframe logits warped at the model's resolution; two keyframes are "
            "blended as softmax probabilities",
        }


@dataclass
class Flow:
    """Dense optical flow from a frame to a keyframe, at the working resolution."""

    field: np.ndarray  # (h, w, 2) float32: frame pixel (x, y) is keyframe pixel (x, y) + field
    error: np.ndarray  # (h, w) uint8: |frame - keyframe warped by the flow|, grey levels

    @property
    def bad_share(self) -> float:
        """Share of the frame that the warped keyframe mispredicts."""
        return float(np.count_nonzero(self.error > BAD_PIXEL)) / self.error.size

    def resized(self, height: int, width: int) -> np.ndarray:
        """The field on another grid, in that grid's pixels (averaged when shrinking)."""
        h, w = self.field.shape[:2]
        if (height, width) == (h, w):
            return self.field
        shrink = height <= h and width <= w
        field = cv2.resize(
            self.field,
            (width, height),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        field[..., 0] *= width / w
        field[..., 1] *= height / h
        return field


def working_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) at which flow is computed: short side ``short_side``, never larger than the frame."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


class FlowEstimator:
    """DIS optical flow at a reduced working resolution; not thread-safe (one per thread).

    ``finest_scale``: the finest pyramid level DIS refines to (its presets stop at 2, a
    quarter of the resolution; 1 is twice as fine and about twice as dear).
    """

    def __init__(
        self, preset: str = "fast", size: int | None = 240, finest_scale: int | None = None
    ) -> None:
        if preset not in FLOW_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; known: {', '.join(FLOW_PRESETS)}")
        self.preset = preset
        self.size = size
        self.finest_scale = finest_scale
        self._dis = cv2.DISOpticalFlow_create(FLOW_PRESETS[preset])
        if finest_scale is not None:
            self._dis.setFinestScale(finest_scale)

    def field(self, frame: np.ndarray, keyframe: np.ndarray) -> np.ndarray:
        """(h, w, 2) float32 flow from ``frame`` to ``keyframe`` (grey images from ``grey``)."""
        return self._dis.calc(frame, keyframe, None)

    def grey(self, rgb: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 RGB frame as a grey image at the working resolution."""
        h, w = working_size(*rgb.shape[:2], self.size)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if grey.shape != (h, w):
            grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
        return grey

    def __call__(self, frame: np.ndarray, keyframe: np.ndarray) -> Flow:
        """Flow from ``frame`` to ``keyframe`` (grey images from ``grey``) and its warp error."""
        field = self.field(frame, keyframe)
        xs, ys = _pixel_grid(*frame.shape)
        warped = cv2.remap(
            keyframe, xs + field[..., 0], ys + field[..., 1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        return Flow(field, cv2.absdiff(frame, warped))


MAX_FLOW_THREADS = 4


class FlowPool:
    """Optical flow of frame pairs on a pool of threads, one DIS estimator each: the pairs
    are independent, so keyframe mode keeps up with a fast model (a GPU) on several cores.

    ``submit`` returns a ``Future`` of the ``Flow``, or the ``Flow`` itself with one worker
    (no thread then). ``ovseg_cli.threads.resolved`` turns either into the ``Flow``.
    """

    def __init__(
        self,
        preset: str = "fast",
        size: int | None = 240,
        workers: int = 1,
        finest_scale: int | None = None,
    ) -> None:
        self.estimator = FlowEstimator(preset, size, finest_scale)  # the caller's thread
        self._settings = (preset, size, finest_scale)
        self._local = threading.local()
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="ovseg-flow") if workers > 1 else None
        )

    def _estimator(self) -> FlowEstimator:
        estimator = getattr(self._local, "estimator", None)
        if estimator is None:  # DIS is not thread-safe: one per thread
            estimator = self._local.estimator = FlowEstimator(*self._settings)
        return estimator

    def _flow(self, frame: np.ndarray, keyframe: np.ndarray) -> Flow:
        return self._estimator()(frame, keyframe)

    def _field(self, frame: np.ndarray, keyframe: np.ndarray) -> np.ndarray:
        return self._estimator().field(frame, keyframe)

    def submit(self, frame: np.ndarray, keyframe: np.ndarray) -> Flow | Future[Flow]:
        """The flow from ``frame`` to ``keyframe`` (grey images), or its future."""
        if self._pool is None:
            return self.estimator(frame, keyframe)
        return self._pool.submit(self._flow, frame, keyframe)

    def submit_field(
        self, frame: np.ndarray, keyframe: np.ndarray
    ) -> np.ndarray | Future[np.ndarray]:
        """The flow field alone (no warp error), or its future (``threads.resolved``)."""
        if self._pool is None:
            return self.estimator.field(frame, keyframe)
        return self._pool.submit(self._field, frame, keyframe)

    def close(self) -> None:
        """No more flows: the threads end once those asked for are done. Nothing is
        cancelled: the reader closes the pool at the end of the video, while the frames
        whose flows are still being computed wait to be returned."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def flow_threads() -> int:
    """Threads for keyframe mode's optical flow: the cores left to it, up to 4."""
    from ovseg_cli.threads import spare_cores

    return spare_cores(MAX_FLOW_THREADS)


def identity_flow(height: int, width: int) -> Flow:
    """A flow that moves nothing (a frame identical to its keyframe)."""
    return Flow(np.zeros((height, width, 2), np.float32), np.zeros((height, width), np.uint8))


@functools.lru_cache(maxsize=8)
def _sample_grid(height: int, width: int, device: str) -> torch.Tensor:
    """(h, w, 2) pixel-centre coordinates (x, y) of a grid, on a device."""
    import torch

    xs, ys = _pixel_grid(height, width)
    return torch.from_numpy(np.stack([xs, ys], -1)).to(device)


def warp_scores(scores: torch.Tensor, flow: Flow) -> torch.Tensor:
    """Bilinearly warp (C, h, w) keyframe scores to the frame of ``flow``, at their resolution."""
    import torch
    import torch.nn.functional as F

    _, h, w = scores.shape
    field = torch.from_numpy(flow.resized(h, w)).to(scores.device, non_blocking=True)
    coords = _sample_grid(h, w, str(scores.device)) + field
    # pixel centres to grid_sample's [-1, 1] (align_corners=False): a zero flow samples
    # every cell at its own centre, so the scores come back unchanged
    size = torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
    grid = (2 * coords + 1) / size - 1
    out = F.grid_sample(
        scores[None].float(),
        grid[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0]


def warp_labels(labels: np.ndarray, flow: Flow) -> np.ndarray:
    """Warp an (H, W) keyframe label map to the frame of ``flow`` (nearest neighbour)."""
    h, w = labels.shape
    field = flow.resized(h, w)
    xs, ys = _pixel_grid(h, w)
    return cv2.remap(
        labels, xs + field[..., 0], ys + field[..., 1], cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def blend_weight(prev: Flow, next_: Flow, t: float) -> np.ndarray:
    """Per-pixel weight (h, w) of the previous keyframe at temporal position ``t`` in (0, 1).

    Each side's weight is its temporal closeness times exp(-error / CONFIDENCE_SCALE), so
    where one warp is wrong (occlusion, a flow failure) the other side takes over; a side
    that mispredicts more than CUT_SHARE of the frame (across a cut) gets no weight at all.
    """
    prev_cut, next_cut = prev.bad_share > CUT_SHARE, next_.bad_share > CUT_SHARE
    if prev_cut != next_cut:
        return np.full(prev.error.shape, 0.0 if prev_cut else 1.0, np.float32)
    t = min(max(t, 1e-6), 1 - 1e-6)
    ep = cv2.GaussianBlur(prev.error.astype(np.float32), (0, 0), ERROR_BLUR)
    en = cv2.GaussianBlur(next_.error.astype(np.float32), (0, 0), ERROR_BLUR)
    # wp / (wp + wn) with wp = (1 - t) exp(-ep / s), wn = t exp(-en / s), as a logistic
    logit = math.log((1 - t) / t) + (en - ep) / CONFIDENCE_SCALE
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def _weight_at(weight: np.ndarray, height: int, width: int) -> np.ndarray:
    if weight.shape == (height, width):
        return weight
    h, w = weight.shape
    shrink = height <= h and width <= w
    return cv2.resize(
        weight, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def propagate_scores(
    prev: torch.Tensor,
    prev_flow: Flow,
    next_: torch.Tensor | None = None,
    next_flow: Flow | None = None,
    t: float = 0.0,
) -> torch.Tensor:
    """Class scores (C, h, w) of a frame from its keyframes' scores (logits) and flows.

    Forward (no next keyframe): the previous keyframe's logits, warped. Bidirectional:
    the mixture of both warped keyframes' softmax probabilities (``blend_weight``),
    returned as log-probabilities, whose softmax and argmax are the mixture's.
    """
    import torch

    warped = warp_scores(prev, prev_flow)
    if next_ is None or next_flow is None:
        return warped
    weight = blend_weight(prev_flow, next_flow, t)
    _, h, w = prev.shape
    wp = torch.from_numpy(_weight_at(weight, h, w)).to(prev.device, non_blocking=True)
    mixture = wp * warped.softmax(0) + (1 - wp) * warp_scores(next_, next_flow).softmax(0)
    return mixture.clamp_min(1e-30).log()


def propagate_labels(
    prev: np.ndarray,
    prev_flow: Flow,
    next_: np.ndarray | None = None,
    next_flow: Flow | None = None,
    t: float = 0.0,
) -> np.ndarray:
    """A label map (H, W) of a frame from its keyframes' label maps and flows.

    Bidirectional, each pixel takes the label of the side with the larger ``blend_weight``:
    the argmax of the blended one-hot maps.
    """
    warped = warp_labels(prev, prev_flow)
    if next_ is None or next_flow is None:
        return warped
    weight = _weight_at(blend_weight(prev_flow, next_flow, t), *prev.shape)
    return np.where(weight >= 0.5, warped, warp_labels(next_, next_flow))
