"""Memory a run will need, estimated before any work and checked against what is available.

Every setting that scales memory has a hard upper limit in the config (``MAX_*`` in
``ovseg_cli.config``), and within those limits the estimate below decides: a ViT's
attention grows with the square of its token count, so ``--size 100000`` on a small clip
would otherwise allocate until the kernel kills the process. The estimates are upper
bounds of the main allocations (attention maps, activations, frames held for optical-flow
propagation, the temporal history), not exact figures.
"""

from __future__ import annotations

import os
from pathlib import Path

from ovseg_cli.errors import OvsegError

GIB = 2**30
FLOAT = 4  # bytes per float32
HEADROOM = 0.85  # share of the available memory a run may plan to use


def vit_bytes(tokens: int, batch: int, width: int, heads: int) -> int:
    """Peak memory of one ViT block on ``batch`` images of ``tokens`` tokens (float32)."""
    attention = heads * tokens * tokens * FLOAT * 3  # scores, softmax and a prior/mask
    activations = tokens * width * FLOAT * 12  # residual stream, LN, q/k/v, 4x MLP hidden
    return batch * (attention + activations)


def fusion_bytes(patches: int, history: int, dim: int) -> int:
    """Temporal fusion of one frame: similarities to the history, the prior and the history."""
    return patches * patches * (history * 3 + 1) * FLOAT + (history + 1) * dim * patches * FLOAT


def _cgroup_free() -> int | None:
    """Memory left under a cgroup v2 limit (containers), if there is one."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        used = int((base / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_host_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, within a container's limit."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = None
    cgroup = _cgroup_free()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def available_device_bytes(device: object) -> int | None:
    """Free memory of a CUDA device (None elsewhere: the host figure applies)."""
    import torch

    dev = torch.device(device)  # type: ignore[arg-type]
    if dev.type != "cuda":
        return None
    try:
        return int(torch.cuda.mem_get_info(dev)[0])
    except RuntimeError:
        return None


def check_fits(need: int, available: int | None, what: str, advice: str) -> None:
    """Raise OvsegError when ``need`` bytes exceed the usable share of ``available``."""
    if available is None or need <= HEADROOM * available:
        return
    raise OvsegError(
        f"{what} would need about {need / GIB:.1f} GiB of memory, more than the "
        f"{available / GIB:.1f} GiB available; {advice}"
    )
