"""The image tower in torch and in ONNX Runtime at several thread counts, interleaved.

    python benchmarks/bench_onnx_threads.py [--clip ViT-B-16] [--method clearclip]
        [--size 224x400] [--rounds 5] [--repeats 3] [--load]

Each round times every configuration once (``--repeats`` passes each), in turn, so a drift
of the machine's speed hits all of them alike; medians over the rounds are reported.
Configurations: torch with 1, n-1 and n threads and ONNX Runtime with 1, n-1 and n
intra-op threads (n = the cores this process may use), each with and without spinning
worker threads. ``--load`` adds two background threads that decode and encode video
frames (PyAV) while the tower runs, standing in for ``ovseg segment``'s reader and writer.
The graph comes from ovseg's export cache (exported first if missing). The last line is
JSON: {config: median ms per image}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any


def video_load(stop: threading.Event) -> None:
    """Encode and decode 640x360 frames in a loop, as the reader and writer threads do."""
    import io

    import av
    import numpy as np

    rgb = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    while not stop.is_set():
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            s = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "threads": "1"})
            s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
            for _ in range(8):
                out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(s.encode(None))
        buf.seek(0)
        with av.open(buf) as inp:
            for frame in inp.decode(video=0):
                frame.to_ndarray(format="rgb24")


def main() -> None:
    """Run the comparison and print a table and a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--method", default="clearclip")
    ap.add_argument("--size", default="224x400")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", action="store_true", help="decode/encode video alongside")
    args = ap.parse_args()

    import torch

    from ovseg_cli.clip.dense import DenseClipEncoder
    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.runtime.onnx_session import load_onnx_encoder, run_session, usable_cores

    h, w = (int(v) for v in args.size.lower().split("x"))
    cores = usable_cores()
    counts = sorted({1, max(1, cores - 1), cores})
    enc = DenseClipEncoder(load_clip(args.clip, "none").visual, args.method).eval()
    images = torch.randn(1, 3, h, w)
    graph = load_onnx_encoder(enc, args.clip, threads=1)
    source = graph.info["graph"]
    print(f"{args.clip} {args.method} {h}x{w}, {cores} usable cores, graph {source}")

    configs: dict[str, Any] = {}
    for n in counts:

        def torch_pass(n: int = n) -> None:
            torch.set_num_threads(n)
            with torch.no_grad():
                enc(images)

        configs[f"torch threads={n}"] = torch_pass
    for n in counts:
        for spin in (True, False):
            session = _session(source, n, spin)
            configs[f"onnx threads={n} spin={int(spin)}"] = lambda s=session: run_session(s, images)

    stop = threading.Event()
    workers = [threading.Thread(target=video_load, args=(stop,), daemon=True) for _ in range(2)]
    if args.load:
        for t in workers:
            t.start()
    try:
        for run in configs.values():
            run()  # warm-up: first-call allocations and kernel choice
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(args.rounds):
            for name, run in configs.items():
                start = time.perf_counter()
                for _ in range(args.repeats):
                    run()
                times[name].append((time.perf_counter() - start) / args.repeats * 1000)
    finally:
        stop.set()
    medians = {k: round(statistics.median(v), 1) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:28s} median {medians[name]:8.1f} ms  min {min(v):8.1f}  max {max(v):8.1f}")
    print(json.dumps(medians))


def _session(folder: str, threads: int, spin: bool) -> Any:
    """A session over the cached model with other thread settings."""
    import onnxruntime as ort

    from ovseg_cli.runtime.onnx_cache import MODEL_FILE, onnx_cache_dir
    from ovseg_cli.runtime.onnx_session import session_options

    opts = session_options(threads, spinning=spin)
    model = str(onnx_cache_dir() / folder / MODEL_FILE)
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    main()
