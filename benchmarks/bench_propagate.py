"""`ovseg propagate` end to end on CamVid val: a person's labels on every Kth frame, the rest
carried by the command, scored by `ovseg eval --predictions`.

    python benchmarks/bench_propagate.py DATA_DIR [--intervals 4,8] [--formats png,cvat]

DATA_DIR is a CamVid copy in the SegNet layout (``val/``, ``valannot/``, ``classes.txt``;
e.g. ``../shared/data/camvid``); its val split is one 101-frame sequence of 480x360 frames
at 15 Hz. In a temporary folder the benchmark

1. encodes the val frames into a lossless video (PNG in QuickTime, 15 fps), the VIDEO;
2. prepares the dataset with `ovseg prep camvid` (the ground truth `eval` scores against);
3. for each interval K writes the ground truth of frames 0, K, 2K, ... as the labels a
   person would give: a folder of greyscale masks with labelmap.txt (``png``) and a CVAT
   "Segmentation mask 1.1" zip of colour masks (``cvat``); void is left unlabelled;
4. runs ``ovseg propagate VIDEO --labels ... --masks --no-overlay`` (the command, in a
   subprocess) and ``ovseg eval --data PREPARED --predictions OUT --split all``, and reads
   the mIoU of the frames in between (report.json's ``by_frame_kind.propagated``: the
   labelled frames are the output's keyframes).

fps is propagate's own loop (meta.json, decoding to the last mask written; process start
and reading the labels' list excluded) and, beside it, the whole command's wall time.
The last line is JSON: {"png": {"4": {"miou": ..., "fps": ..., "wall_fps": ...}, ...}, ...}.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

VOID = 11


def ovseg(*args: str) -> None:
    """Run the ovseg command line; stop with its error if it fails."""
    cmd = [sys.executable, "-m", "ovseg_cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({res.returncode}):\n{res.stderr}")


def read_classes(root: Path) -> list[tuple[str, tuple[int, int, int]]]:
    """CamVid's 11 classes (name, colour) from classes.txt."""
    out = []
    for line in (root / "classes.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        index, name, color = line.split()[:3]
        if int(index) < VOID:
            out.append((name, tuple(int(c) for c in color.split(","))))
    return out


def encode_video(frames: list[Path], path: Path, fps: int = 15) -> None:
    """The frames as a lossless video (PNG codec in QuickTime)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        first = Image.open(frames[0])
        stream.width, stream.height = first.size
        stream.pix_fmt = "rgb24"
        for p in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(p).convert("RGB")), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def labelmap(names: list[str], colors: list[tuple[int, int, int]], black_first: bool) -> str:
    """A CVAT-style labelmap.txt (black 'background' first for colour masks: unlabelled)."""
    lines = ["# label:color_rgb:parts:actions"]
    if black_first:
        lines.append("background:0,0,0::")
    lines += [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(names, colors, strict=True)]
    return "\n".join(lines) + "\n"


def write_labels(
    labels: list[Path], k: int, names: list[str], colors: list[tuple[int, int, int]], out: Path
) -> tuple[Path, Path]:
    """Frames 0, K, 2K, ... as a greyscale mask folder and as a CVAT zip."""
    folder = out / f"labels_k{k}"
    folder.mkdir()
    (folder / "labelmap.txt").write_text(labelmap(names, colors, black_first=False))
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = colors
    zip_path = out / f"labels_k{k}.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("labelmap.txt", labelmap(names, colors, black_first=True))
        listed = []
        for i in range(0, len(labels), k):
            mask = np.asarray(Image.open(labels[i])).copy()
            mask[mask >= VOID] = 255  # void: a pixel the person left unlabelled
            Image.fromarray(mask, "L").save(folder / f"frame_{i:06d}.png")
            buf = io.BytesIO()
            Image.fromarray(lut[mask]).save(buf, "PNG")  # 255 -> black, CVAT's background
            zf.writestr(f"SegmentationClass/frame_{i:06d}.png", buf.getvalue())
            listed.append(f"frame_{i:06d}")
        zf.writestr("ImageSets/Segmentation/default.txt", "\n".join(listed) + "\n")
    return folder, zip_path


def run(video: Path, labels: Path, prepared: Path, out: Path) -> dict[str, float]:
    """propagate then eval --predictions: mIoU of the frames in between, and speeds."""
    t0 = time.perf_counter()
    ovseg("propagate", str(video), "--labels", str(labels), "--masks", "--no-overlay",
          "--out", str(out / "propagated"), "-q")  # fmt: skip
    wall = time.perf_counter() - t0
    meta = json.loads((out / "propagated" / "meta.json").read_text())
    ovseg("eval", "--data", str(prepared), "--predictions", str(out / "propagated"),
          "--split", "all", "--examples", "0", "--out", str(out / "eval"), "-q")  # fmt: skip
    report = json.loads((out / "eval" / "report.json").read_text())
    kinds = report["by_frame_kind"]
    return {
        "miou": round(100 * kinds["propagated"]["mIoU"], 2),
        "labelled_miou": round(100 * kinds["keyframes"]["mIoU"], 2),
        "frames_scored": kinds["propagated"]["frames"],
        "fps": meta["timings"]["fps"],
        "wall_fps": round(meta["output"]["frames"] / wall, 2),
    }


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="CamVid in the SegNet layout")
    parser.add_argument("--intervals", default="4,8")
    parser.add_argument("--formats", default="png,cvat", help="labels given as: png, cvat")
    args = parser.parse_args()
    root = args.data_dir
    images = sorted((root / "val").glob("*.png"))
    if not images or not (root / "valannot").is_dir():
        raise SystemExit(f"{root}: not a CamVid copy in the SegNet layout (val/, valannot/)")
    labels = [root / "valannot" / p.name for p in images]
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="ovseg-bench-propagate-") as tmp:
        work = Path(tmp)
        video = work / f"{images[0].name.split('_')[0]}.mov"  # the video's name: 0016E5
        encode_video(images, video)
        prepared = work / "prepared"
        ovseg("prep", "camvid", str(root), "--out", str(prepared), "-q")
        names = json.loads((prepared / "index.json").read_text())["classes"]
        colors = [c for _, c in read_classes(root)]
        print(f"CamVid val: {len(images)} frames of 480x360, labels on every Kth frame")
        print(f"{'labels':>6} {'K':>3} {'mIoU':>7} {'fps':>7} {'wall fps':>9}")
        result: dict[str, dict[str, dict[str, float]]] = {f: {} for f in formats}
        for k in (int(x) for x in args.intervals.split(",")):
            folder, zip_path = write_labels(labels, k, names, colors, work)
            for fmt in formats:
                out = work / f"run_{fmt}_k{k}"
                out.mkdir()
                r = run(video, folder if fmt == "png" else zip_path, prepared, out)
                result[fmt][str(k)] = r
                print(f"{fmt:>6} {k:>3} {r['miou']:>7.2f} {r['fps']:>7.1f} {r['wall_fps']:>9.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
