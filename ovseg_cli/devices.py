"""Device and precision choice: ``--device auto|cpu|cuda|cuda:N|mps``, ``--precision``."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from ovseg_cli.config import PRECISIONS
from ovseg_cli.errors import OvsegError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a --device value, refusing ones this machine lacks."""
    name = name.strip().lower()
    if name == "auto":
        # $OVSEG_DEVICE says what auto means (the test suite: cpu, wherever it runs)
        chosen = os.environ.get("OVSEG_DEVICE", "").strip().lower()
        if chosen and chosen != "auto":
            try:
                return resolve_device(chosen)
            except OvsegError as exc:
                raise OvsegError(f"$OVSEG_DEVICE: {exc}") from None
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OvsegError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OvsegError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OvsegError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OvsegError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise OvsegError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32 on CPU; on GPU, 'auto' means bf16 where supported, else fp16."""
    if name not in PRECISIONS:
        raise OvsegError(f"unknown precision {name!r} (use {', '.join(PRECISIONS)})")
    if device.type == "cpu":
        return "fp32" if name == "auto" else name
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    return name


def autocast(device: torch.device, precision: str) -> Any:
    """An autocast context for the precision, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
