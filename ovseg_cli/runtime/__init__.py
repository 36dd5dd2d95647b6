"""Where the frozen CLIP image tower runs: torch, or ONNX Runtime (``--runtime auto|torch|onnx``).

With ``onnx`` only the image tower moves: the patch embedding, the positional-embedding
resize, every block including the dense method's modified last one, and the intermediate
token maps an OV2VSS checkpoint reads. Everything trainable, the temporal state and the
text side stay in torch. The graph is exported once per model and setting and cached
(``onnx_cache``); ``onnx_export`` builds and checks it, ``onnx_session`` runs it.

ONNX Runtime is imported only when it is used, so ``import ovseg_cli`` stays light.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ovseg_cli.config import RUNTIMES
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.runtime.events import ExportListener, export_listener, notify_export

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ovseg")

__all__ = [
    "ExportListener", "export_listener", "notify_export", "onnx_encoder", "onnxruntime_available",
    "place_encoder", "resolve_runtime", "runtime_info",
]  # fmt: skip

INSTALL_HINT = "pip install 'ovseg[onnx]'"
RUNTIME_ENV = "OVSEG_RUNTIME"  # what `auto` means on a machine


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the exporter's packages (onnx, onnxscript) can be imported."""
    return all(
        importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript")
    )


def resolve_runtime(name: str, device: torch.device, precision: str = "fp32") -> str:
    """``torch`` or ``onnx`` for a --runtime value on a device, refusing what cannot run."""
    name = name.strip().lower()
    if name not in RUNTIMES:
        raise OvsegError(f"unknown runtime {name!r} (use auto, torch or onnx)")
    if name == "auto":
        preferred = machine_runtime()
        if preferred != "auto":
            return resolve_runtime(preferred, device, precision)
        # ONNX Runtime's CPU kernels beat eager torch on the CPU; on a GPU torch is the fast path
        cpu_fp32 = device.type == "cpu" and precision == "fp32"
        return "onnx" if cpu_fp32 and onnxruntime_available() else "torch"
    if name == "onnx":
        if not onnxruntime_available():
            raise OvsegError(f"--runtime onnx needs ONNX Runtime: {INSTALL_HINT}")
        if device.type != "cpu":
            raise OvsegError(f"--runtime onnx runs on the CPU, not {device}; use --runtime torch")
        if precision != "fp32":
            raise OvsegError(
                f"--runtime onnx computes in fp32, not {precision}; use --precision fp32"
            )
    return name


def machine_runtime() -> str:
    """What ``auto`` means on this machine: $OVSEG_RUNTIME (torch, onnx, or auto when unset).

    A value that names no runtime is refused, like a bad $OVSEG_ONNX_THREADS or
    $OVSEG_DEVICE: ignored, a typo ('pytorch') would silently run the other runtime.
    """
    value = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if not value:
        return "auto"
    if value not in RUNTIMES:
        raise OvsegError(
            f"${RUNTIME_ENV}: unknown runtime {value!r}, use auto, torch or onnx"
            + did_you_mean(value, RUNTIMES)
        )
    return value


def runtime_info(runtime: str, encoder: Any) -> dict[str, Any]:
    """The image encoder's runtime for meta.json and report.json, with ONNX Runtime's details."""
    info: dict[str, Any] = {"runtime": runtime}
    if runtime == "onnx":
        info["onnx"] = dict(encoder.info)
    return info


def onnx_encoder(encoder: Any, arch: str, layers: Sequence[int] = (), **kwargs: Any) -> Any:
    """An ONNX Runtime stand-in for a ``DenseClipEncoder`` (see ``onnx_session.load_onnx_encoder``)."""
    from ovseg_cli.runtime.onnx_session import load_onnx_encoder

    return load_onnx_encoder(encoder, arch, layers, **kwargs)


def place_encoder(
    encoder: Any,
    arch: str,
    requested: str,
    device: torch.device,
    precision: str,
    layers: Sequence[int] = (),
) -> tuple[Any, str]:
    """The dense encoder to run and its runtime (``torch`` or ``onnx``) for a --runtime value.

    ``auto`` falls back to torch, with a warning, when a graph cannot be exported or does
    not match torch; an explicit ``onnx`` fails instead.
    """
    runtime = resolve_runtime(requested, device, precision)
    if runtime == "torch":
        return encoder, runtime
    try:
        return onnx_encoder(encoder, arch, layers), runtime
    except OvsegError as exc:
        if requested.strip().lower() == "onnx":
            raise OvsegError(f"{exc}; use --runtime torch") from exc
        log.warning("%s; the image encoder runs in torch instead", exc)
        return encoder, "torch"
