"""What each training-free dense method costs per frame, at the default settings.

    python benchmarks/bench_methods.py [--size N] [--rounds 3] [--refine]

One 1280x720 frame is segmented by `ovseg segment`'s training-free segmenter (ViT-B-16,
random weights: speed does not depend on them) with each method of
``ovseg_cli.clip.methods``, the default short side (``--size`` to change), 20 classes. The
methods run interleaved, round after round, so that the drift of a shared machine's speed
falls on all of them alike; each figure is the median over the rounds. ``--refine`` also
times PAMR on the scores.

The last line is JSON: {"size": ..., "ms_per_frame": {"scclip": ..., ...}, "ms_pamr": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    """Time every method and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="Short side (default: ovseg's).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--refine", action="store_true", help="Also time --refine pamr.")
    args = parser.parse_args()

    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.clip.methods import DENSE_METHOD_NAMES
    from ovseg_cli.clip.pamr import pamr
    from ovseg_cli.clip.prompts import Vocabulary
    from ovseg_cli.segment.training_free import TrainingFreeSegmenter

    clip = load_clip("ViT-B-16", "none")
    rgb = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    models = {
        m: TrainingFreeSegmenter(clip, dense_method=m, size=args.size) for m in DENSE_METHOD_NAMES
    }
    any_model = next(iter(models.values()))
    image = any_model.prepare(rgb)
    text = F.normalize(torch.randn(20, clip.model.text_projection.shape[1]))
    vocab = Vocabulary([], text, ())
    times: dict[str, list[float]] = {m: [] for m in models}
    for model in models.values():  # warm-up
        model.step(image, model.init_state(), vocab)
    for _ in range(args.rounds):
        for name, model in models.items():
            t = time.perf_counter()
            model.step(image, model.init_state(), vocab)
            times[name].append(time.perf_counter() - t)
    ms = {m: round(1000 * statistics.median(v)) for m, v in times.items()}
    h, w = image.shape[-2:]
    print(f"1280x720 frame seen at {w}x{h}, ViT-B-16, {torch.get_num_threads()} threads")
    for name, value in ms.items():
        print(f"{name:>18}: {value} ms")
    out = {"size": min(h, w), "ms_per_frame": ms}
    if args.refine:
        logits = torch.randn(1, 20, h, w)
        pamr(image, logits)
        t = time.perf_counter()
        for _ in range(args.rounds):
            pamr(image, logits)
        out["ms_pamr"] = round(1000 * (time.perf_counter() - t) / args.rounds)
        print(f"{'PAMR':>18}: {out['ms_pamr']} ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
