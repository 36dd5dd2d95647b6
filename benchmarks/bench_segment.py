"""How close `ovseg segment` runs to the speed of its backbone, and what keyframes gain, in one run.

    python benchmarks/bench_segment.py [VIDEO] [--frames 24] [--rounds 3] [--clip ViT-B-16]
        [--size N] [--keyframe-interval 4] [--device cpu] [--batch N] [--precision auto]
        [--runtime auto|torch|onnx] [--versus torch|onnx] [--host-only]

Both numbers come from the same frames, the same model (random weights: speed does not
depend on them) and the default --size:

- end to end: ``run_segment`` as the CLI calls it (decode, resize, dense CLIP, temporal
  fusion, text matching, upsampling, overlay drawing, H.264 encoding with audio, palette
  PNG masks), frames per second of the frame loop;
- backbone only: the dense image encoder alone on the already decoded and resized frames,
  ``--batch`` frames a pass;
- with keyframes: ``run_segment`` on the same frames with ``--keyframe-interval K`` (the
  model on every Kth frame, optical flow for the rest), end to end;
- with ``--versus R``: the every-frame run again with the image encoder on runtime R, so
  ``runtime_speedup`` = end-to-end fps with ``--runtime`` / with R (e.g. ``--runtime onnx
  --versus torch``: what ONNX Runtime gains over PyTorch).

With ``--host-only`` the model is replaced by a segmenter that costs nothing (it returns
fixed class scores of the right shape; frames are still decoded and resized for it), so the
runs measure the ceiling the host work sets (decoding, resizing, upsampling, overlay, H.264,
PNG masks, optical flow): ``host_fps`` with every frame a keyframe (K=1) and
``host_fps_keyframes`` with ``--keyframe-interval`` K, overlay and masks written, on any
machine (a CPU-only one included). The last line is then {"host_fps": ...,
"keyframe_interval": K, "host_fps_keyframes": ...}.

The three are measured one after the other in each of ``--rounds`` rounds. ``ratio``
compares the every-frame run (K=1) with the backbone and ``keyframe_speedup`` the keyframe
run with the every-frame run, each within a round (this machine's speed drifts by tens of
percent over minutes); the medians over the rounds are reported. The last line is JSON: {"e2e_fps": ...,
"backbone_fps": ..., "ratio": ..., "keyframe_interval": K, "e2e_fps_keyframes": ...,
"keyframe_speedup": ...} (the last three only when K > 1), with "runtime": ..., "versus": ...,
"e2e_fps_versus": ..., "runtime_speedup": ... under ``--versus``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
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


class HostOnly:
    """A segmenter that costs nothing: ``model``'s interface with fixed, smooth class scores
    of the right shape from ``step_batch``, so only the host work around the model is timed."""

    def __init__(self, model) -> None:
        self._model = model
        self._scores: dict[tuple[int, int, int], object] = {}

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def _fixed(self, classes: int, h: int, w: int):
        import torch
        import torch.nn.functional as F

        patch = self._model.clip.patch_size
        key = (classes, h // patch, w // patch)
        if key not in self._scores:
            coarse = torch.randn(1, classes, 4, 4, generator=torch.Generator().manual_seed(0))
            self._scores[key] = F.interpolate(coarse, size=key[1:], mode="bilinear")[0]
        return self._scores[key]

    def step_batch(self, images, state, vocabulary):
        """The fixed scores once per image, as the model's step_batch would return them."""
        scores = self._fixed(len(vocabulary.names), *images.shape[-2:])
        return [scores] * images.shape[0], state

    def step(self, image, state, vocabulary):
        """The fixed scores of one image."""
        logits, state = self.step_batch(image, state, vocabulary)
        return logits[0], state


def host_only(args, cfg, video, classes, tmp: Path) -> dict:
    """``host_fps`` with every frame a keyframe and with keyframes every K, in rounds."""
    from ovseg_cli.segment.loading import load_model
    from ovseg_cli.segment.run import run_segment

    model = HostOnly(load_model(cfg))
    k = args.keyframe_interval
    rows = []
    for r in range(args.rounds):
        row = {"host": run_segment(video, classes, cfg, out=tmp / f"h{r}", model=model).fps}
        if k > 1:
            cfg_k = replace(cfg, keyframe_interval=k)
            row["keyed"] = run_segment(video, classes, cfg_k, out=tmp / f"hk{r}", model=model).fps
        rows.append(row)
        print(f"round {r + 1}: host only, K=1 {row['host']:.2f} fps"
              + (f", K={k} {row['keyed']:.2f} fps" if k > 1 else ""), flush=True)  # fmt: skip
    result = {"host_fps": round(statistics.median(r["host"] for r in rows), 3)}
    if k > 1:
        result.update(keyframe_interval=k,
                      host_fps_keyframes=round(statistics.median(r["keyed"] for r in rows), 3))  # fmt: skip
    return result


def backbone_fps(model, images, batch: int = 1) -> float:
    """Frames per second of the dense image encoder alone, ``batch`` frames a pass."""
    import torch

    batches = [torch.cat(images[i : i + batch]) for i in range(0, len(images), batch)]
    with torch.no_grad():
        model.embed(batches[0].to(model.device))  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x in batches:
            model.embed(x.to(model.device))
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return len(images) / (time.perf_counter() - t)


def main() -> None:
    """Run the benchmark and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=24, help="frames to segment per run")
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=None, help="default: ovseg's default size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, else 1")
    parser.add_argument(
        "--keyframe-interval", type=int, default=4, help="K of the keyframe run (1: skip it)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--runtime", default="auto", help="auto, torch or onnx (image encoder)")
    parser.add_argument("--versus", default=None, help="also time the K=1 run on this runtime")
    parser.add_argument(
        "--host-only", action="store_true", help="a model that costs nothing: the host ceiling"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the random-weights warning is expected here

    from ovseg_cli.classes import parse_classes
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model
    from ovseg_cli.segment.run import run_segment
    from ovseg_cli.segment.stream import default_batch
    from ovseg_cli.video.reader import VideoReader, probe_video

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or (DEFAULT_VIDEO if DEFAULT_VIDEO.exists() else None)
        if video is None:
            video = synthetic_video(Path(tmp) / "synthetic.mp4", args.frames)
        info = probe_video(video)
        end = (args.frames - 0.5) / float(info.average_rate)  # exactly --frames frames
        cfg = SegmentConfig(
            clip=args.clip, pretrained="none", size=args.size, end=end, masks=True,
            device=args.device, precision=args.precision, batch=args.batch, runtime=args.runtime,
        )  # fmt: skip
        if args.host_only:
            print(f"video: {video} ({info.width}x{info.height}, {args.frames} frames), host only")
            print(json.dumps(host_only(args, cfg, video, parse_classes(CLASSES), Path(tmp))))
            return
        model = load_model(cfg)
        other = load_model(replace(cfg, runtime=args.versus)) if args.versus else None
        batch = args.batch or default_batch(model.device)
        with VideoReader(video, end=end) as reader:
            images = [model.prepare(f.rgb) for f in reader]
        print(f"video: {video} ({info.width}x{info.height}, {len(images)} frames)")
        print(
            f"model: {args.clip} random weights ({model.describe()['dense_method']}), input "
            f"{tuple(images[0].shape[-2:])}, {model.device}, {model.precision}, batch {batch}, "
            f"runtime {model.runtime}" + (f" versus {other.runtime}" if other else "")
        )

        classes = parse_classes(CLASSES)
        k = args.keyframe_interval
        cfg_k = replace(cfg, keyframe_interval=k)
        rows = []
        # Rounds interleave the three measurements, and each ratio is taken within a round:
        # this machine's speed drifts by tens of percent over minutes, within a round far less.
        for r in range(args.rounds):
            row = {"backbone": backbone_fps(model, images, batch)}
            run = run_segment(video, classes, cfg, out=Path(tmp) / f"every{r}", model=model)
            row["e2e"] = run.fps
            if other is not None:
                versus = run_segment(video, classes, cfg, out=Path(tmp) / f"vs{r}", model=other)
                row["versus"] = versus.fps
            if k > 1:  # 1: only the every-frame run
                keyed = run_segment(video, classes, cfg_k, out=Path(tmp) / f"key{r}", model=model)
                row["keyframes"] = keyed.fps
                row["share"] = keyed.meta["propagation"]["keyframe_share"]
            rows.append(row)
            line = f"round {r + 1}: backbone {row['backbone']:.3f} fps, end to end {row['e2e']:.3f} fps"
            if k > 1:
                line += f", K={k} {row['keyframes']:.3f} fps ({row['share']:.0%} keyframes)"
            if other is not None:
                line += f", {other.runtime} {row['versus']:.3f} fps"
            print(line, flush=True)

    def median(key: str) -> float:
        return float(statistics.median(row[key] for row in rows))

    ratio = statistics.median(row["e2e"] / row["backbone"] for row in rows)
    result = {"e2e_fps": round(median("e2e"), 4), "backbone_fps": round(median("backbone"), 4),
              "ratio": round(ratio, 4)}  # fmt: skip
    if k > 1:
        speedup = statistics.median(row["keyframes"] / row["e2e"] for row in rows)
        result.update(keyframe_interval=k, e2e_fps_keyframes=round(median("keyframes"), 4),
                      keyframe_speedup=round(speedup, 4))  # fmt: skip
    if other is not None:
        speedup = statistics.median(row["e2e"] / row["versus"] for row in rows)
        result.update(runtime=model.runtime, versus=other.runtime,
                      e2e_fps_versus=round(median("versus"), 4),
                      runtime_speedup=round(speedup, 4))  # fmt: skip
    print("medians over rounds (ratios taken within each round):")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
