"""Export a dense CLIP image tower to ONNX with dynamic batch, height and width, and check it.

The graph is traced through ``DenseClipEncoder.forward`` alone, so every registered dense
method, present or future, is exported the same way. It is captured by torch's
torch.export-based exporter (``dynamo=True``): the legacy TorchScript exporter fails on
open_clip's attention (the fused ``_native_multi_head_attention``, and with the fast path
off it bakes the token count into reshapes). The exporter tries non-strict torch.export
first, which cannot hash the symbolic grid the encoder's Python caches are keyed by, then
strict (TorchDynamo), which traces them.

Those caches (the resized positional embeddings, NACLIP's neighbourhood prior) would also
bake one grid into the graph if they already held it: tracing sees a constant. So the
trace runs on a copy of the encoder whose ``*_cache`` dicts, and the same-named dicts of
the modules defining the encoder and its method, start empty. The result is then run in
ONNX Runtime at two sizes other than the traced one (one the native grid, where torch
skips the resize) and compared with torch; a graph that disagrees is never cached.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovseg_cli.errors import OvsegError

log = logging.getLogger("ovseg")

OPSET = 20
EXAMPLE_GRID = (5, 7)  # traced at an odd, non-square grid: batch and both sides stay symbolic
EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 1
INPUT_NAME = "images"  # the graph's one input, (B, 3, H, W)
MAX_SIDE_PATCHES = 1024
MAX_BATCH = 4096
# CPU float reordering gives ~1e-6 on unit embeddings; a baked shape or wrong op gives far more
TOLERANCE = 1e-3
# ONNX's protobuf limit is 2 GiB; keep a margin for the graph itself
EXTERNAL_DATA_BYTES = 1_800_000_000


class ImageTower(nn.Module):
    """images (B, 3, H, W) -> (embeddings, *intermediate token maps): the graph ONNX sees."""

    def __init__(self, encoder: nn.Module, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = encoder
        self.layers = layers

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The dense encoder's outputs as a flat tuple."""
        feats = self.encoder(images, intermediate_layers=self.layers)
        return (feats.embeddings, *feats.intermediates)


def output_names(layers: tuple[int, ...]) -> list[str]:
    """Names of the graph's outputs, in ``ImageTower`` order."""
    return ["embeddings", *(f"block{i}" for i in layers)]


@contextlib.contextmanager
def _uncached(encoder: nn.Module) -> Iterator[nn.Module]:
    """A shallow copy of the encoder whose shape-keyed caches, and its modules', start empty."""
    from ovseg_cli.clip.dense import DENSE_METHODS

    twin = copy.copy(encoder)  # shares the weights, not the instance's attribute dict
    for name, value in vars(encoder).items():
        if name.endswith("_cache") and isinstance(value, dict):
            twin.__dict__[name] = {}
    modules = {sys.modules[type(encoder).__module__]}
    method = DENSE_METHODS.get(getattr(encoder, "method", ""))
    if method is not None:  # the registry's module and the head's own (SC-CLIP's)
        modules |= {sys.modules[type(method).__module__], sys.modules[method.head.__module__]}
    saved = [
        (m, name, value)
        for m in modules
        for name, value in vars(m).items()
        if name.endswith("_cache") and isinstance(value, dict)
    ]
    try:
        for m, name, _ in saved:
            setattr(m, name, {})
        yield twin
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def _parameter_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_graph(
    encoder: nn.Module,
    layers: tuple[int, ...],
    folder: Path,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Trace ``encoder`` with ``layers`` read out and save it as ``folder/model.onnx``.

    ``metadata`` goes into the model's ``metadata_props`` (ONNX Runtime reads it back).
    """
    from torch.export import Dim

    patch = int(encoder.patch)
    example = torch.randn(EXAMPLE_BATCH, 3, patch * EXAMPLE_GRID[0], patch * EXAMPLE_GRID[1])
    dims = {
        0: Dim("batch", min=1, max=MAX_BATCH),
        2: patch * Dim("grid_h", min=1, max=MAX_SIDE_PATCHES),
        3: patch * Dim("grid_w", min=1, max=MAX_SIDE_PATCHES),
    }
    path = folder / "model.onnx"
    with _uncached(encoder) as twin, _quiet():
        tower = ImageTower(twin, layers).eval()
        try:
            # the module, not a torch.export program: given a program, the exporter (torch
            # 2.14) bakes the traced token count into a reshape
            onnx_program = torch.onnx.export(
                tower,
                (example,),
                dynamo=True,
                dynamic_shapes=(dims,),
                input_names=[INPUT_NAME],
                output_names=output_names(layers),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OvsegError(
                f"could not export the {getattr(encoder, 'method', '')} image encoder to ONNX "
                f"({type(exc).__name__}: {first[:200]})"
            ) from exc
        onnx_program.model.metadata_props.update(metadata or {})
        external = _parameter_bytes(encoder) > EXTERNAL_DATA_BYTES
        onnx_program.save(path, external_data=external)
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns about things that do not concern users (side effects it ignores)."""
    loggers = [logging.getLogger(n) for n in ("torch._dynamo", "torch.export", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_sizes(encoder: nn.Module) -> list[tuple[int, int, int]]:
    """(batch, height, width) the exported graph is checked at: none of them the traced one."""
    patch = int(encoder.patch)
    nh, nw = (int(g) for g in encoder.native_grid)
    tall = (nh + 3, max(2, nw // 2))
    return [(1, nh * patch, nw * patch), (3, tall[0] * patch, tall[1] * patch)]


def max_differences(
    run: Any, encoder: nn.Module, layers: tuple[int, ...], batch: int, height: int, width: int
) -> list[float]:
    """Largest |ONNX - torch| per output on one random input, relative to outputs above 1."""
    gen = torch.Generator().manual_seed(height * 10007 + width)
    images = torch.randn(batch, 3, height, width, generator=gen)
    with torch.no_grad():
        ref = encoder(images, intermediate_layers=layers)
    expected = [ref.embeddings, *ref.intermediates]
    got = run(images)
    if len(got) != len(expected):
        return [float("inf")]
    diffs = []
    for a, b in zip(got, expected, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            diffs.append(float("inf"))
            continue
        scale = max(1.0, float(b.abs().max()))
        diffs.append(float((a.float() - b.float()).abs().max()) / scale)
    return diffs


def verify(run: Any, encoder: nn.Module, layers: tuple[int, ...]) -> None:
    """Refuse a graph whose outputs differ from torch's at sizes it was not traced at."""
    for batch, height, width in check_sizes(encoder):
        try:
            worst = max(max_differences(run, encoder, layers, batch, height, width))
        except Exception as exc:  # ONNX Runtime raises its own types for shape failures
            worst, why = float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        else:
            why = f"largest difference {worst:.2e}"
        if not worst <= TOLERANCE:
            raise OvsegError(
                f"the ONNX export of the {getattr(encoder, 'method', '')} image encoder does not "
                f"match torch at {height}x{width} ({why})"
            )
