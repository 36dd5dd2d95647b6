"""The image tower in ONNX Runtime, behind the ``DenseClipEncoder`` interface.

``load_onnx_encoder`` returns a ``DenseClipEncoder`` whose ``forward`` runs the cached
(or freshly exported) graph, so the segmenters, the OV2VSS backbone and the sliding
windows of ``encode`` use it unchanged. The torch weights stay attached (the state dict
and the checkpoint format do not change), but no torch compute runs in the tower.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ovseg_cli.clip.dense import DenseClipEncoder, DenseFeatures
from ovseg_cli.errors import OvsegError
from ovseg_cli.runtime.events import notify_export
from ovseg_cli.runtime.onnx_cache import (
    GRAPH_KEY_PROP,
    CachedGraph,
    GraphCache,
    encoder_settings,
    graph_key,
    key_digest,
    report_unusable,
)
from ovseg_cli.runtime.onnx_export import INPUT_NAME, export_graph, output_names, verify
from ovseg_cli.threads import usable_cores

log = logging.getLogger("ovseg")

THREADS_ENV = "OVSEG_ONNX_THREADS"
# ONNX Runtime's idle pool threads spin by default, taking the cores the reader and writer
# need: without spinning, 2 threads took 1.10-1.26 s a frame instead of 1.30-1.39 s (2 cores)
SPINNING = False
# beyond this many intra-op threads per usable core the count is a mistake (capped_threads)
MAX_THREADS_PER_CORE = 4


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
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
    if not (explicit.isascii() and explicit.isdigit()) or not explicit.strip("0"):
        raise OvsegError(f"{THREADS_ENV} must be a whole number >= 1, not {explicit!r}")
    # more digits than int() converts (4300) is still just "too many"
    count = int(explicit) if len(explicit) <= 18 else sys.maxsize
    shown = explicit if len(explicit) <= 12 else f"{explicit[:9]}..."
    return capped_threads(count, f"{THREADS_ENV}={shown}")


def capped_threads(threads: int, source: str, cores: int | None = None) -> int:
    """``threads``, or the usable cores (with a warning) when it is far more than they run.

    A few threads per core are honoured: more threads than cores is slower, but it is an
    experiment a user may mean to run (and is harmless). Thousands are a typo, not an
    experiment, and ONNX Runtime starts every one of them: 100000 crashed it
    (segmentation fault after 32 s, no message), and with 4096 the process did not exit
    within two minutes, on the 2-core machine. Such a value reads as "as fast as possible",
    which is every usable core (the default), so it is a warning and the run goes on, where
    a value that is no count at all ('many', 0) has no reading and is refused.
    """
    cores = usable_cores() if cores is None else cores
    if threads <= MAX_THREADS_PER_CORE * cores:
        return threads
    log.warning(
        "%s is more than %d threads for each of the %d cores this process may use; using %d",
        source, MAX_THREADS_PER_CORE, cores, cores,
    )  # fmt: skip
    return cores


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
    feed = {INPUT_NAME: images.detach().to("cpu", torch.float32).contiguous().numpy()}
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
    threads = capped_threads(threads, f"threads={threads}") if threads else onnx_threads()
    key = graph_key(encoder, arch, wanted)
    cache = GraphCache(Path(cache_dir) if cache_dir is not None else None)
    cached = cache.load(key)
    session = _cached_session(cached, key, wanted, threads) if cached is not None else None
    exported = session is None
    if session is None:
        session = _export_session(encoder, arch, wanted, key, cache, threads)
    problem = graph_mismatch(session, key, wanted)
    if problem is not None:  # a fresh export that passed verify: a bug, never a user's doing
        raise RuntimeError(f"the exported ONNX graph {problem}")
    info = {
        "onnxruntime": ort.__version__,
        "threads": threads,
        "graph": cache.folder(key).name,
        "exported": exported,
    }
    return OnnxDenseEncoder(encoder, session, wanted, info)


def graph_mismatch(session: Any, key: dict[str, Any], layers: tuple[int, ...]) -> str | None:
    """Why a loaded graph is not the one ``key`` describes (inputs, outputs, key), or None.

    Sizes and checksums only prove that the files are the ones ``entry.json`` lists; a
    listing rewritten around another valid graph (another method's, other outputs) passes
    them, and would fail on every run or, worse, compute another method's features.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or len(inputs[0].shape) != 4:
        return f"its graph does not take one 4-D {INPUT_NAME!r} input"
    names, expected = [o.name for o in outputs], output_names(layers)
    if names != expected:
        return f"its graph outputs {', '.join(names)}, not {', '.join(expected)}"
    if any(len(o.shape) != 4 for o in outputs):
        return "its graph's outputs are not 4-D feature maps"
    stamp = session.get_modelmeta().custom_metadata_map.get(GRAPH_KEY_PROP)
    if stamp != key_digest(key):
        return "its graph was exported for another model, setting or version"
    return None


def _cached_session(
    cached: CachedGraph, key: dict[str, Any], layers: tuple[int, ...], threads: int
) -> Any | None:
    """A session on a checked entry's graph, or None (with a warning) when it is not the
    graph the key describes: the caller exports it again, replacing the entry."""
    try:
        session = make_session(cached.model_bytes or cached.model_path, threads)
    except Exception as exc:  # ONNX Runtime raises its own types for a model it cannot read
        problem = f"ONNX Runtime cannot load its graph: {type(exc).__name__}"
    else:
        problem = graph_mismatch(session, key, layers)
    if problem is None:
        return session
    report_unusable(cached.folder, problem)
    return None


def _export_session(
    encoder: DenseClipEncoder,
    arch: str,
    layers: tuple[int, ...],
    key: dict[str, Any],
    cache: GraphCache,
    threads: int,
) -> Any:
    """Export the graph into the cache, check it against torch, and open a session on it."""
    message = f"Exporting the {arch} image encoder ({encoder.method}) to ONNX, once"
    log.info("%s into %s", message, cache.root)
    with cache.writing(key) as tmp:
        notify_export(message)  # once the folder is known to be writable: no false start
        model = export_graph(encoder, layers, tmp, metadata={GRAPH_KEY_PROP: key_digest(key)})
        session = make_session(model, threads)
        verify(lambda x: run_session(session, x), encoder, layers)
    return session
