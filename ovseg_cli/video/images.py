"""A prepared dataset's video as a frame source: its image files read in order, like a video.

`eval` streams these through the same ``SegmentationStream`` that `segment` runs on video
files, so both compute the same thing. Frames are timed at a nominal rate (image sequences
carry no time stamps); the pixels are what the files hold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovseg_cli.errors import OvsegError
from ovseg_cli.video.reader import DecodedFrame, VideoInfo


def read_image(path: str | Path, mode: str | None = "RGB") -> np.ndarray:
    """An image file as an array (converted to ``mode``), with a one-line error when it breaks."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert(mode) if mode else img)
    except (OSError, UnidentifiedImageError) as exc:
        raise OvsegError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


MAX_IMAGE_THREADS = 4


def image_threads() -> int:
    """Threads decoding a dataset's images ahead: the cores left, up to 4."""
    from ovseg_cli.threads import spare_cores

    return spare_cores(MAX_IMAGE_THREADS)


class ImageSequence:
    """The frames of one video of a dataset, read from image files in the given order."""

    def __init__(self, images: Sequence[str | Path], rate: Fraction | int = 1) -> None:
        if not images:
            raise OvsegError("a video with no frames")
        self.images = [Path(p) for p in images]
        self.skipped = 0  # image files are all-or-nothing: a broken one is an error
        try:
            with Image.open(self.images[0]) as first:  # the header only
                width, height = first.size
        except (OSError, UnidentifiedImageError) as exc:
            raise OvsegError(f"cannot read {self.images[0]}: {exc}") from None
        rate = Fraction(rate)
        self.info = VideoInfo(
            path=self.images[0].parent, width=width, height=height, rotation=0,
            average_rate=rate, time_base=1 / rate, duration=len(self.images) / rate,
            frame_count=len(self.images), codec="images", has_audio=False,
        )  # fmt: skip

    def __iter__(self) -> Iterator[DecodedFrame]:
        """The frames in order; the next few images are decoded ahead by a pool of threads
        (PIL decodes without the GIL), so a fast model does not wait for the files."""
        workers = image_threads()
        rate = self.info.average_rate
        if workers == 1:
            for i, path in enumerate(self.images):
                yield DecodedFrame(index=i, pts=i, time=float(i / rate), rgb=read_image(path))
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="ovseg-images") as pool:
            ahead: deque[Future[np.ndarray]] = deque()
            paths = iter(self.images)
            for i in range(len(self.images)):
                while len(ahead) < 2 * workers and (path := next(paths, None)) is not None:
                    ahead.append(pool.submit(read_image, path))
                rgb = ahead.popleft().result()
                yield DecodedFrame(index=i, pts=i, time=float(i / rate), rgb=rgb)

    def close(self) -> None:
        """Nothing to release: each image is closed once read."""
