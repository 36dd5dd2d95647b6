"""How much the model's input resolution caps accuracy, next to what each resolution costs.

    python benchmarks/bench_resolution.py DATA_DIR [--sizes 224,336,448,560] [--frames 101]

DATA_DIR is a CamVid copy in the SegNet layout (``val/`` and ``valannot/``, e.g.
``../shared/data/camvid``). For each short side S the frame is resized as `ovseg segment
--size S` resizes it (both sides multiples of the 16 px patch), and the model is handed
*perfect* class scores at its own resolution: the ground truth's class shares in each
16x16 patch. Upsampled bilinearly to the frame and argmaxed (as ovseg turns scores into a
mask), they give the best mIoU any ViT-B/16 method can reach at that size: the ceiling.
With PAMR the perfect patch scores are first upsampled to the model's input and refined
on the frame (``--refine pamr``). Classes smaller than a patch (poles, signs, pedestrians
far away) vanish below a ceiling no method can pass.

Next to it, milliseconds per frame of the segmenter at that size (ViT-B-16, random weights:
speed does not depend on them), with the default dense method, one whole-frame pass and
with the references' 224 px windows (stride 112), plus PAMR's own cost. Timings are the
median of ``--repeats`` runs on one CamVid frame.

The last line is JSON: {"ceiling": {"224": ..., ...}, "ceiling_pamr": {...},
"ms_per_frame": {...}, "ms_per_frame_windows": {...}, "ms_pamr": {...}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VOID = 11
NUM_CLASSES = 11
PATCH = 16


def load_val(root: Path, limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The val sequence's RGB frames and label maps, in temporal order."""
    images = sorted((root / "val").glob("*.png"))[:limit]
    if not images or not (root / "valannot").is_dir():
        raise SystemExit(f"{root}: not a CamVid copy in the SegNet layout (val/, valannot/)")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    labels = [np.asarray(Image.open(root / "valannot" / p.name)) for p in images]
    return frames, labels


def patch_scores(label: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(C, h/16, w/16): each class's share of each patch of the label resized to ``size``."""
    resized = np.asarray(Image.fromarray(label).resize(size[::-1], Image.Resampling.NEAREST))
    onehot = F.one_hot(torch.from_numpy(resized.astype(np.int64)), NUM_CLASSES + 1)
    onehot = onehot[..., :NUM_CLASSES].permute(2, 0, 1).float()[None]  # void: no class
    return F.avg_pool2d(onehot, PATCH)[0]


def ceilings(frames, labels, short: int, mean, std) -> tuple[float, float]:
    """(mIoU of perfect patch scores, the same refined by PAMR) at one short side."""
    from ovseg_cli.clip.dense import model_input_size, to_model_input
    from ovseg_cli.clip.pamr import pamr
    from ovseg_cli.evaluation.metrics import ConfusionMatrix
    from ovseg_cli.segment.masks import logits_to_mask

    plain, refined = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    for rgb, label in zip(frames, labels, strict=True):
        size = model_input_size(*label.shape, short, PATCH)
        scores = patch_scores(label, size)
        gt = np.where(label == VOID, 255, label)
        plain.update(logits_to_mask(scores, label.shape), gt)
        image = to_model_input(rgb, size, mean, std)
        up = F.interpolate(scores[None], size, mode="bilinear", align_corners=False)
        refined.update(logits_to_mask(pamr(image, up)[0], label.shape), gt)
    return plain.compute()["mIoU"], refined.compute()["mIoU"]


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    """Print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--sizes", default="224,336,448,560")
    parser.add_argument("--frames", type=int, default=None, help="Val frames for the ceiling.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=20, help="Classes of the timed runs.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from ovseg_cli.clip.pamr import pamr
    from ovseg_cli.clip.prompts import Vocabulary
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    frames, labels = load_val(args.data, args.frames)
    sizes = [int(s) for s in args.sizes.split(",")]
    base = SegmentConfig(pretrained="none", device="cpu", temporal=False)
    whole, windows = load_model(base), load_model(base, window=224)
    text = F.normalize(torch.randn(args.classes, whole.clip.model.text_projection.shape[1]))
    vocab = Vocabulary([], text, ())
    out: dict[str, dict[str, float]] = {
        k: {}
        for k in ("ceiling", "ceiling_pamr", "ms_per_frame", "ms_per_frame_windows", "ms_pamr")
    }
    print(f"CamVid val, {len(frames)} frames; timings: {base.dense_method}, ViT-B-16, "
          f"{torch.get_num_threads()} threads, {args.classes} classes")  # fmt: skip
    print("short side | ceiling mIoU | with PAMR | ms/frame whole | ms/frame windows | ms PAMR")
    for short in sizes:
        ceiling, with_pamr = ceilings(frames, labels, short, whole.clip.mean, whole.clip.std)
        image = whole.prepare(frames[0], short)
        logits = torch.randn(1, args.classes, *image.shape[-2:])
        ms = timed(lambda image=image: whole.step(image, whole.init_state(), vocab), args.repeats)
        ms_win = timed(
            lambda image=image: windows.step(image, windows.init_state(), vocab), args.repeats
        )
        ms_pamr = timed(lambda image=image, logits=logits: pamr(image, logits), args.repeats)
        key = str(short)
        out["ceiling"][key], out["ceiling_pamr"][key] = (
            round(100 * ceiling, 2),
            round(100 * with_pamr, 2),
        )
        out["ms_per_frame"][key], out["ms_per_frame_windows"][key] = round(ms), round(ms_win)
        out["ms_pamr"][key] = round(ms_pamr)
        h, w = image.shape[-2:]
        print(f"{short:>5} ({w}x{h}) | {100 * ceiling:12.1f} | {100 * with_pamr:9.1f} | "
              f"{ms:14.0f} | {ms_win:16.0f} | {ms_pamr:7.0f}")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
