"""Shot cuts: where a video jumps to another scene, so the temporal state starts afresh.

The temporal fusion and OV2VSS's distant frame assume that the frames they remember show
the current scene. At a hard cut they do not: the history would smear two scenes together
and the distant frame (III-B) would describe the wrong one. So the stream resets its state
at a cut, and the cut frame becomes the first (and distant) frame of a new shot.

A cut is detected from pixels, not from model features, so that it behaves the same with
any weights. The score is PySceneDetect's "content" measure: the mean absolute difference
of hue (circular), saturation and value between consecutive 64x36 thumbnails (0-255
scale). On the real clips in ``../shared/data`` (10-30 fps, camera and subject motion,
CamVid driving at 15 Hz) consecutive frames stay below 16; joining any two of those clips
gives 62 to 110. The default threshold, 30, sits between. Gradual transitions (fades,
dissolves) are not detected, and a flash can be taken for a cut.
"""

from __future__ import annotations

import numpy as np

from ovseg_cli.config import SegmentConfig, default_of

DEFAULT_THRESHOLD: float = default_of(SegmentConfig, "shot_threshold")
THUMBNAIL = (64, 36)  # (w, h): the whole picture's layout and colours, ~0.3 ms from 720p


def thumbnail_hsv(rgb: np.ndarray) -> np.ndarray:
    """(36, 64, 3) int16 HSV thumbnail of an (H, W, 3) uint8 RGB frame (OpenCV's hue: 0-179)."""
    import cv2

    thumb = cv2.resize(rgb, THUMBNAIL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV).astype(np.int16)


def content_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute HSV difference of two thumbnails; hue is circular, all on a 0-255 scale."""
    diff = np.abs(a - b).astype(np.float32)
    hue = np.minimum(diff[..., 0], 180 - diff[..., 0]) * (255 / 90)  # 90 = opposite hues
    return float((hue.mean() + diff[..., 1].mean() + diff[..., 2].mean()) / 3)


class ShotDetector:
    """Feed frames in order; says which ones start a new shot (never the first)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 255.0:
            raise ValueError(f"shot threshold must be in (0, 255], got {threshold}")
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def __call__(self, rgb: np.ndarray) -> bool:
        """Whether this frame starts a new shot."""
        thumb = thumbnail_hsv(rgb)
        previous, self._previous = self._previous, thumb
        return previous is not None and content_difference(previous, thumb) > self.threshold

    def reset(self) -> None:
        """Forget the previous frame (a new video)."""
        self._previous = None
