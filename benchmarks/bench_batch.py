"""What one batch command saves over one command per video: the model and the text
embeddings are built once instead of once per video.

    python benchmarks/bench_batch.py [--clips 12] [--frames 4] [--clip ViT-B-16]
        [--device cpu] [--threads N]

Writes ``--clips`` short synthetic clips (``--frames`` frames of 160x120 each), then times,
as a user would run them (``python -m ovseg_cli segment``, random weights, overlay and
masks):

- one batch command over the folder (``--out DIR``: the model loaded once);
- one command per clip, one after another (the model loaded ``--clips`` times).

Each time is the wall time of the whole command(s), Python start-up and imports included,
since that is what a user waits for. The masks of the two must be identical. The last line
is JSON: {"batch_speedup": separate / batch, "batch_s": ..., "separate_s": ...,
"same_masks": true, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = "person,dog,grass,tree,road"


def write_clips(folder: Path, clips: int, frames: int) -> list[Path]:
    """``clips`` different moving-gradient clips of ``frames`` frames, 160x120."""
    import av
    import numpy as np

    folder.mkdir(parents=True)
    paths = []
    yy, xx = np.mgrid[0:120, 0:160]
    for c in range(clips):
        path = folder / f"clip{c:02d}.mp4"
        with av.open(str(path), "w") as out:
            v = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
            v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
            for i in range(frames):
                shift = 5 * i + 17 * c
                rgb = np.stack([(xx + shift) % 256, (yy + 3 * c) % 256, (xx + yy + i) % 256], -1)
                frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
                out.mux(v.encode(frame))
            out.mux(v.encode(None))
        paths.append(path)
    return paths


def run(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``ovseg segment`` command (which must succeed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "segment", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ovseg segment {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - t0


def masks(folder: Path) -> list[bytes]:
    """The palette masks of an output folder, in order."""
    return [p.read_bytes() for p in sorted((folder / "masks").glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the commands")
    opts = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    common = ["-c", CLASSES, "--masks", "--clip", opts.clip, "--pretrained", "none",
              "--device", opts.device, "-q"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = write_clips(root / "clips", opts.clips, opts.frames)
        batch_s = run([str(root / "clips"), "--out", str(root / "batch"), *common], env)
        print(f"batch: {opts.clips} clips in {batch_s:.1f} s", flush=True)
        separate_s = 0.0
        for clip in clips:
            separate_s += run([str(clip), "--out", str(root / "one" / clip.stem), *common], env)
        print(f"separate: {opts.clips} commands in {separate_s:.1f} s", flush=True)
        same = all(masks(root / "batch" / c.stem) == masks(root / "one" / c.stem) for c in clips)
    print(json.dumps({
        "batch_speedup": round(separate_s / batch_s, 2), "batch_s": round(batch_s, 1),
        "separate_s": round(separate_s, 1), "clips": opts.clips, "frames": opts.frames,
        "clip": opts.clip, "same_masks": same,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
