"""What the incremental (streaming) OV2VSS step saves over recomputing each clip, in one run.

    python benchmarks/bench_streaming.py [--frames 300] [--size 448] [--clip ViT-B-16]

The default OV2VSS model on a randomly initialised ViT-B-16 (speed does not depend on the
weights), 448x448 frames of a drifting texture, 5 classes:

- streaming: ``OV2VSSSegmenter.step`` per frame: one new frame is encoded, the preceding
  frames' features come from the bounded ring buffer;
- recompute: the training clip forward for every frame: all five frames (t-9, t-6, t-3,
  t and the distant frame) encoded again, then the same decoding; timed every few frames
  during the stream, and compared with the streaming steps just before (median ratio);
- memory: bytes held by the stream state after 30 and after ``--frames`` frames (and the
  process's resident memory, for reference).

The last line is JSON: {"speedup": ..., "mem_ratio_300_30": ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

import numpy as np
import torch


def rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--recompute", type=int, default=6, help="clip forwards to time")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the random-weights warning is expected here

    from ovseg_cli.classes import parse_classes
    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.devices import resolve_device
    from ovseg_cli.model.config import ModelConfig
    from ovseg_cli.model.ov2vss import OV2VSS
    from ovseg_cli.model.streaming import OV2VSSSegmenter

    device = resolve_device(args.device)
    torch.manual_seed(0)
    clip = load_clip(args.clip, "none", device=str(device))
    cfg = ModelConfig(clip=args.clip, pretrained="none", size=args.size)
    seg = OV2VSSSegmenter(OV2VSS(cfg, clip), clip, device=device)
    vocab = seg.encode_vocabulary(parse_classes("person,dog,grass,tree,road"))
    rng = np.random.default_rng(0)
    texture = torch.from_numpy(
        rng.integers(0, 256, (3, args.size, args.size + 2 * args.frames), dtype=np.uint8)
    )

    def frame(i: int) -> torch.Tensor:
        return texture[:, :, 2 * i : 2 * i + args.size].unsqueeze(0).contiguous()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def recompute_once(t_idx: int) -> float:
        idx = [max(t_idx - k, 0) for k in cfg.gaps] + [t_idx]
        clip_frames = torch.stack([frame(i)[0] for i in idx])[None].to(device)
        with torch.no_grad():
            sync()
            t = time.perf_counter()
            seg.model(clip_frames, frame(0).to(device), vocab.embeddings.to(device))
            sync()
        return time.perf_counter() - t

    # Recomputations are interleaved with the stream (one every `probe` frames, compared with
    # the streaming steps just before it), so machine noise hits both sides alike.
    probe = max(20, args.frames // (args.recompute + 1))
    state = seg.init_state()
    times, mem, ratios, recompute = [], {}, [], []
    recompute_once(0)  # warm-up
    for i in range(args.frames):
        sync()
        t = time.perf_counter()
        seg.step(frame(i), state, vocab)
        sync()
        times.append(time.perf_counter() - t)
        if i + 1 in (30, args.frames):
            mem[i + 1] = (state.nbytes, rss_mb())
            print(
                f"after {i + 1} frames: state {state.nbytes / 2**20:.1f} MiB, peak RSS {rss_mb():.0f} MiB"
            )
        if i >= 10 and (i + 1) % probe == 0:
            r = recompute_once(i)
            recompute.append(r)
            ratios.append(r / float(np.mean(times[-5:])))
    stream_s = float(np.mean(times[10:]))
    recompute_s = float(np.mean(recompute))
    speedup = float(np.median(ratios))

    print(f"model: OV2VSS on {args.clip} (random weights), {args.size}x{args.size}, {device}")
    print(
        f"streaming step: {stream_s:.3f} s/frame; recomputing the 5-frame clip: {recompute_s:.3f} s/frame"
    )
    n = args.frames
    ratio = mem[n][0] / mem[30][0] if 30 in mem and n in mem else float("nan")
    print(json.dumps({"speedup": round(speedup, 3), f"mem_ratio_{n}_30": round(ratio, 4),
                      "stream_s": round(stream_s, 4), "recompute_s": round(recompute_s, 4),
                      "rss_mb_30": round(mem.get(30, (0, 0))[1]), f"rss_mb_{n}": round(mem[n][1])}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
