"""How close `ovseg segment` runs to the speed of its backbone, measured in one run.

    python benchmarks/bench_segment.py [VIDEO] [--frames 40] [--clip ViT-B-16] [--size N]

Both numbers come from the same frames, the same model (random weights: speed does not
depend on them) and the default --size:

- end to end: ``run_segment`` as the CLI calls it (decode, resize, dense CLIP, temporal
  fusion, text matching, upsampling, overlay drawing, H.264 encoding with audio, palette
  PNG masks), frames per second of the frame loop;
- backbone only: the dense image encoder alone on the already decoded and resized frames
  (timed before and after the end-to-end run, averaged, to even out machine noise).

The last line is JSON: {"e2e_fps": ..., "backbone_fps": ..., "ratio": ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO / ".." / "shared" / "data" / "videos" / "sam2_01_dog.mp4"
CLASSES = "person,dog,grass,tree,road"


def synthetic_video(path: Path, frames: int) -> Path:
    """A 1280x720 30000/1001 fps clip with AAC audio, when no real video is at hand."""
    import av
    import numpy as np

    rate = Fraction(30000, 1001)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = 1280, 720, "yuv420p"
        a = out.add_stream("aac", rate=48000, layout="stereo")
        yy, xx = np.mgrid[0:720, 0:1280]
        for i in range(frames):
            rgb = np.stack([(xx + 8 * i) % 256, (yy + 4 * i) % 256, (xx + yy) % 256], -1)
            out.mux(v.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")))
        out.mux(v.encode(None))
        samples = int(48000 * frames / rate)
        for start in range(0, samples, 1024):
            n = min(1024, samples - start)
            t = (np.arange(start, start + n) / 48000.0).astype(np.float32)
            wave = np.stack([0.2 * np.sin(2 * np.pi * 440 * t)] * 2)
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(a.encode(frame))
        out.mux(a.encode(None))
    return path


def backbone_fps(model, images) -> float:
    """Frames per second of the dense image encoder alone."""
    import torch

    from ovseg_cli.devices import autocast

    with torch.no_grad(), autocast(model.device, model.precision):
        model.encoder.encode(images[0].to(model.device), model.window)  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x in images:
            model.encoder.encode(x.to(model.device), model.window)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return len(images) / (time.perf_counter() - t)


def main() -> None:
    """Run the benchmark and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=40, help="frames to segment")
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=None, help="default: the CLIP's native size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the random-weights warning is expected here

    from ovseg_cli.classes import parse_classes
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment_run import run_segment
    from ovseg_cli.segmenter import load_model
    from ovseg_cli.video_reader import VideoReader, probe_video

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or (DEFAULT_VIDEO if DEFAULT_VIDEO.exists() else None)
        if video is None:
            video = synthetic_video(Path(tmp) / "synthetic.mp4", args.frames)
        info = probe_video(video)
        end = (args.frames + 0.5) / float(info.average_rate)
        cfg = SegmentConfig(
            clip=args.clip, pretrained="none", size=args.size, end=end, masks=True,
            device=args.device,
        )  # fmt: skip
        model = load_model(cfg)
        with VideoReader(video, end=end) as reader:
            images = [model.prepare(f.rgb) for f in reader]
        print(f"video: {video} ({info.width}x{info.height}, {len(images)} frames)")
        print(
            f"model: {args.clip} random weights, input {tuple(images[0].shape[-2:])}, {model.device}"
        )

        before = backbone_fps(model, images)
        run = run_segment(video, parse_classes(CLASSES), cfg, out=Path(tmp) / "out", model=model)
        after = backbone_fps(model, images)

    backbone = (before + after) / 2
    e2e = run.fps
    print(f"backbone only: {before:.3f} / {after:.3f} fps (before / after)")
    print(f"end to end:    {e2e:.3f} fps over {run.frames} frames (overlay + masks)")
    print(json.dumps({"e2e_fps": round(e2e, 4), "backbone_fps": round(backbone, 4),
                      "ratio": round(e2e / backbone, 4)}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
