"""How well optical flow carries keyframe labels to the frames in between, and how fast.

    python benchmarks/bench_propagation.py DATA_DIR [--intervals 2,4,8] [--preset fast] [--flow-size 240]

DATA_DIR is a CamVid copy in the SegNet layout (``val/`` and ``valannot/``, e.g.
``../shared/data/camvid``); its val split is one 101-frame sequence at 15 Hz. For each
keyframe interval K, frames 0, K, 2K, ... are keyframes and carry their ground-truth
labels; every other frame gets a label map from them with ``ovseg_cli.segment.propagation``, at
the library's default settings:

- hold: the previous keyframe's labels, unchanged (no flow);
- forward: the previous keyframe's labels warped by the flow from the frame to it;
- bidirectional: the previous and the next keyframe warped and blended per pixel
  (frames after the last keyframe: forward only, as ``segment --bidirectional`` does).

mIoU (%) is computed over the in-between frames only, against their ground truth (void
pixels are not scored; a pixel predicted void counts as a miss). Milliseconds per frame
cover everything a propagated 480x360 frame costs: its grey image, the flow(s), the warp
error, warping and blending (keyframes' grey images are made once, as when segmenting), with
OpenCV on one thread (faster on frames this small than two).

The last line is JSON: {"interval4": {"hold": ..., "forward": ..., "bidirectional": ...},
"interval8": {...}, "ms_per_frame": ...} (ms_per_frame: bidirectional, the dearer mode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

VOID = 11
NUM_CLASSES = 11


def load_val(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The val sequence's RGB frames and label maps, in temporal order."""
    images = sorted((root / "val").glob("*.png"))
    if not images or not (root / "valannot").is_dir():
        raise SystemExit(f"{root}: not a CamVid copy in the SegNet layout (val/, valannot/)")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    labels = [np.asarray(Image.open(root / "valannot" / p.name)) for p in images]
    return frames, labels


class Scores:
    """A confusion matrix with an extra column for pixels predicted void."""

    def __init__(self) -> None:
        self.conf = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one frame."""
        keep = gt < NUM_CLASSES
        pair = gt[keep].astype(np.int64) * (NUM_CLASSES + 1) + np.minimum(pred[keep], NUM_CLASSES)
        self.conf += np.bincount(pair, minlength=self.conf.size).reshape(self.conf.shape)

    def miou(self) -> float:
        """Mean IoU in percent over the classes present in ground truth or prediction."""
        tp = np.diag(self.conf[:, :NUM_CLASSES]).astype(np.float64)
        union = self.conf.sum(1) + self.conf[:, :NUM_CLASSES].sum(0) - tp
        return float(100 * np.mean(tp[union > 0] / union[union > 0]))


def run_interval(
    frames: list[np.ndarray], labels: list[np.ndarray], k: int, preset: str, size: int | None
) -> tuple[dict[str, float], dict[str, float]]:
    """mIoU per mode and milliseconds per propagated frame per mode, at interval k."""
    from ovseg_cli.segment.propagation import FlowEstimator, propagate_labels

    flows = FlowEstimator(preset, size)
    n = len(frames)
    keys = list(range(0, n, k))
    key_grey = {i: flows.grey(frames[i]) for i in keys}
    scores = {mode: Scores() for mode in ("hold", "forward", "bidirectional")}
    seconds = {"forward": 0.0, "bidirectional": 0.0}
    count = 0
    for i in range(n):
        if i % k == 0:
            continue
        prev = i // k * k
        nxt = prev + k if prev + k < n else None
        scores["hold"].add(labels[prev], labels[i])

        t0 = time.perf_counter()
        grey = flows.grey(frames[i])
        back = flows(grey, key_grey[prev])
        forward = propagate_labels(labels[prev], back)
        t1 = time.perf_counter()
        grey = flows.grey(frames[i])
        back = flows(grey, key_grey[prev])
        if nxt is None:
            both = propagate_labels(labels[prev], back)
        else:
            ahead = flows(grey, key_grey[nxt])
            both = propagate_labels(labels[prev], back, labels[nxt], ahead, (i - prev) / k)
        t2 = time.perf_counter()

        seconds["forward"] += t1 - t0
        seconds["bidirectional"] += t2 - t1
        count += 1
        scores["forward"].add(forward, labels[i])
        scores["bidirectional"].add(both, labels[i])
    miou = {mode: round(s.miou(), 2) for mode, s in scores.items()}
    ms = {mode: round(1000 * s / count, 2) for mode, s in seconds.items()}
    return miou, ms


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="CamVid in the SegNet layout")
    parser.add_argument("--intervals", default="2,4,8")
    parser.add_argument("--preset", default="fast", help="DIS preset: ultrafast, fast, medium")
    parser.add_argument("--flow-size", type=int, default=240, help="short side of the flow")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # a frame's cost on one core (two threads are slower this small)
    frames, labels = load_val(args.data_dir)
    h, w = frames[0].shape[:2]
    print(f"CamVid val: {len(frames)} frames of {w}x{h}; DIS '{args.preset}', flow short side "
          f"{args.flow_size}")  # fmt: skip
    print(f"{'interval':>8} {'hold':>7} {'forward':>8} {'bidir':>7} {'ms fwd':>7} {'ms bidir':>9}")
    result: dict[str, object] = {}
    ms_all = []
    for k in (int(x) for x in args.intervals.split(",")):
        miou, ms = run_interval(frames, labels, k, args.preset, args.flow_size)
        ms_all.append(ms)
        print(f"{k:>8} {miou['hold']:>7.1f} {miou['forward']:>8.1f} {miou['bidirectional']:>7.1f} "
              f"{ms['forward']:>7.2f} {ms['bidirectional']:>9.2f}")  # fmt: skip
        result[f"interval{k}"] = miou
    result["ms_per_frame"] = round(max(m["bidirectional"] for m in ms_all), 2)
    result["ms_per_frame_forward"] = round(max(m["forward"] for m in ms_all), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
