"""The image tower in ONNX Runtime, behind the ``DenseClipEncoder`` interface.

``load_onnx_encoder`` returns a ``DenseClipEncoder`` whose ``forward`` runs the cached
(or freshly exported) graph, so the segmenters, the OV2VSS backbone and the sliding
windows of ``encode`` use it unchanged. The torch weights stay attached (the state dict
and the checkpoint format do not change), but no torch compute runs in the tower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ovseg_cli.clip.dense import DenseClipEncoder, DenseFeatures
from ovseg_cli.errors import OvsegError
from ovseg_cli.runtime import notify_export
from ovseg_cli.runtime.onnx_cache import GraphCache, encoder_settings, graph_key
from ovseg_cli.runtime.onnx_export import export_graph, output_names, verify

log = logging.getLogger("ovseg")

THREADS_ENV = "OVSEG_ONNX_THREADS"
# ONNX Runtime's idle pool threads spin by default, taking the cores the reader and writer
# need: without spinning, 2 threads took 1.10-1.26 s a frame instead of 1.30-1.39 s (2 cores)
SPINNING = False


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None) -> int:
    """ONNX Runtime's intra-op threads: every core this process may use.

    Measured on the idle 2-core development machine (ViT-B-16, SC-CLIP, 336x592, dog clip,
    ``bench_segment.py --runtime onnx --versus torch``, 3 interleaved rounds): with one
    thread, leaving a core to the reader and writer threads, end to end ran at 0.38-0.39 fps
    against PyTorch's 0.44-0.48; with both cores at 0.61-0.64 fps (1.33x PyTorch). The
    reader and writer threads spend their time in C code that releases the GIL and need far
    less than a core, and the pool does not spin, so it yields to them when they run. (On
    cores shared with other busy processes one thread did better; $OVSEG_ONNX_THREADS sets
    the count for such machines.)
    """
    return max(1, usable_cores() if cores is None else cores)


def onnx_threads() -> int:
    """Intra-op threads to use: $OVSEG_ONNX_THREADS (to measure other choices) or the rule."""
    explicit = os.environ.get(THREADS_ENV, "").strip()
    if not explicit:
        return default_threads()
    if not explicit.isdigit() or int(explicit) < 1:
        raise OvsegError(f"{THREADS_ENV} must be a whole number >= 1, not {explicit!r}")
    return int(explicit)


def session_options(threads: int, spinning: bool = SPINNING) -> Any:
    """Session options: all graph optimisations, ``threads`` intra-op threads, no inter-op pool."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


def make_session(model: bytes | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session for a serialised model or a model file."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def run_session(session: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """The graph's outputs for a (B, 3, H, W) float batch, as CPU tensors."""
    feed = {"images": images.detach().to("cpu", torch.float32).contiguous().numpy()}
    return [torch.from_numpy(out) for out in session.run(None, feed)]


def normalised_layers(encoder: DenseClipEncoder, layers: Sequence[int]) -> tuple[int, ...]:
    """Block indices as ``DenseClipEncoder.forward`` reads them: modulo depth, sorted, once."""
    depth = len(encoder.visual.transformer.resblocks)
    return tuple(sorted({int(i) % depth for i in layers}))


class OnnxDenseEncoder(DenseClipEncoder):
    """A dense CLIP encoder whose forward pass runs an exported graph in ONNX Runtime."""

    runtime = "onnx"

    def __init__(
        self,
        encoder: DenseClipEncoder,
        session: Any,
        layers: tuple[int, ...],
        info: dict[str, Any],
    ) -> None:
        super().__init__(encoder.visual, encoder.method)
        self.__dict__.update(encoder_settings(encoder))  # settings added to the encoder later
        self.session = session
        self.layers = layers
        self.info = info

    def forward(
        self, images: torch.Tensor, intermediate_layers: Sequence[int] = ()
    ) -> DenseFeatures:
        """Dense embeddings (and the exported intermediate maps) of normalised images."""
        wanted = normalised_layers(self, intermediate_layers)
        if wanted and wanted != self.layers:
            raise ValueError(f"this ONNX graph reads blocks {self.layers}, not {wanted}")
        outs = [t.to(images.device) for t in run_session(self.session, images)]
        return DenseFeatures(embeddings=outs[0], intermediates=outs[1:] if wanted else [])


def load_onnx_encoder(
    encoder: DenseClipEncoder,
    arch: str,
    layers: Sequence[int] = (),
    *,
    threads: int | None = None,
    cache_dir: Path | str | None = None,
) -> OnnxDenseEncoder:
    """The encoder's image tower in ONNX Runtime, from the cache or exported (once) into it."""
    import onnxruntime as ort

    wanted = normalised_layers(encoder, layers)
    threads = threads or onnx_threads()
    key = graph_key(encoder, arch, wanted)
    cache = GraphCache(Path(cache_dir) if cache_dir is not None else None)
    cached = cache.load(key)
    exported = cached is None
    if cached is not None:
        session = make_session(cached.model_bytes or cached.model_path, threads)
        folder = cached.folder
    else:
        message = f"Exporting the {arch} image encoder ({encoder.method}) to ONNX, once"
        log.info("%s into %s", message, cache.root)
        notify_export(message)
        with cache.writing(key) as tmp:
            model = export_graph(encoder, wanted, tmp)
            session = make_session(model, threads)
            verify(lambda x: run_session(session, x), encoder, wanted)
        folder = cache.folder(key)
    names = [o.name for o in session.get_outputs()]
    if names != output_names(wanted):  # a graph from another wrapper version: never guess
        raise RuntimeError(f"ONNX graph outputs {names}, expected {output_names(wanted)}")
    info = {
        "onnxruntime": ort.__version__,
        "threads": threads,
        "graph": folder.name,
        "exported": exported,
    }
    return OnnxDenseEncoder(encoder, session, wanted, info)
