"""Which activation a CLIP weights file was trained with, so the model is built to match.

OpenAI's CLIP (and MetaCLIP, DFN, some LAION runs) were trained with QuickGELU,
x * sigmoid(1.702 x); open_clip's plain architecture names (``ViT-B-16``) build exact GELU
and leave QuickGELU to ``-quickgelu`` names or to the tag's ``quick_gelu`` flag. A bare file
given with ``--pretrained FILE`` carries no such flag, and the wrong activation silently
shifts every feature (by ~3e-3 on the reference fixtures, enough to change predictions). A
file is therefore identified, in this order, by:

1. an ``open_clip_config.json`` beside it (open_clip's own export format);
2. a Hugging Face cache folder (``models--ORG--NAME``) on its path that a registered tag
   names as its ``hf_hub`` repository;
3. its SHA-256 against the digests open_clip's registry URLs carry: OpenAI's URLs hold the
   full digest as a folder name, open_clip's release files end in an 8+ digit prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ovseg")

QUICK_GELU_SUFFIX = "-quickgelu"
_FULL_DIGEST = re.compile(r"/([0-9a-f]{64})/[^/]+$")  # openaipublic.azureedge.net/.../<sha>/X.pt
_DIGEST_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")  # .../vit_b_32-...-d867053b.pt


@dataclass(frozen=True)
class WeightsOrigin:
    """What is known about a weights file: the activation it needs and how that is known."""

    quick_gelu: bool
    evidence: str


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _registry() -> list[tuple[str, str, dict[str, Any]]]:
    import open_clip

    return [
        (a, t, open_clip.get_pretrained_cfg(a, t) or {}) for a, t in open_clip.list_pretrained()
    ]


def registry_digests() -> dict[str, tuple[str, str, bool]]:
    """Digests (full, or the prefix a file name carries) -> (arch, tag, quick_gelu)."""
    found: dict[str, tuple[str, str, bool]] = {}
    for arch, tag, cfg in _registry():
        url = cfg.get("url") or ""
        match = _FULL_DIGEST.search(url) or _DIGEST_PREFIX.search(url)
        if match:
            found.setdefault(match.group(1), (arch, tag, bool(cfg.get("quick_gelu"))))
    return found


def _from_config(path: Path) -> WeightsOrigin | None:
    config = path.parent / "open_clip_config.json"
    if not config.is_file():
        return None
    try:
        model_cfg = json.loads(config.read_text(encoding="utf-8")).get("model_cfg") or {}
    except (OSError, ValueError, AttributeError):
        return None
    quick = bool(model_cfg.get("quick_gelu", False))
    return WeightsOrigin(quick, f"{config.name} beside the file says quick_gelu={quick}")


def _from_hub_cache(path: Path) -> WeightsOrigin | None:
    # a snapshot file links to blobs/<sha>: both paths sit inside models--ORG--NAME
    parts = (*path.parts, *path.resolve().parts)
    folders = {
        p.removeprefix("models--").replace("--", "/") for p in parts if p.startswith("models--")
    }
    for arch, tag, cfg in _registry():
        repo = "/".join((cfg.get("hf_hub") or "").strip("/").split("/")[:2])
        if repo and repo in folders:
            quick = bool(cfg.get("quick_gelu"))
            return WeightsOrigin(quick, f"Hugging Face cache of {repo} ({arch}/{tag})")
    return None


def _from_digest(path: Path) -> WeightsOrigin | None:
    known = registry_digests()
    if not known:
        return None
    sha = file_sha256(path)
    for digest, (arch, tag, quick) in known.items():
        if sha.startswith(digest):
            return WeightsOrigin(quick, f"SHA-256 {sha[:12]}... is open_clip's {arch}/{tag}")
    return None


def identify_weights(path: Path) -> WeightsOrigin | None:
    """The activation a weights file needs, if its config, location or digest tells."""
    return _from_config(path) or _from_hub_cache(path) or _from_digest(path)


def quick_gelu_tags(arch: str) -> list[str]:
    """Registered tags of an architecture whose weights were trained with QuickGELU."""
    return [t for a, t, cfg in _registry() if a == arch and cfg.get("quick_gelu")]


def weights_quick_gelu(arch: str, arch_quick: bool, path: Path) -> bool | None:
    """Whether to build ``arch`` with QuickGELU for a weights file; None: as its config says.

    Known weights get the activation they were trained with (a warning says so when that
    contradicts the architecture's name). Unknown ones are built as the name says, with a
    warning when that is GELU while the architecture's published weights use QuickGELU.
    """
    origin = identify_weights(path)
    if origin is not None:
        if origin.quick_gelu != arch_quick:
            log.warning(
                "%s: building %s with %s, not %s as its name says (%s)",
                path.name, arch, _act(origin.quick_gelu), _act(arch_quick), origin.evidence,
            )  # fmt: skip
        return origin.quick_gelu
    tags = quick_gelu_tags(arch)
    if tags and not arch_quick:
        log.warning(
            "%s is not a file open_clip's registry knows, and %s's published weights (%s) were "
            "trained with QuickGELU: building it with GELU, as the name %s says. If these "
            "weights use QuickGELU (OpenAI, MetaCLIP, DFN), pass --clip %s%s; if GELU, put an "
            "open_clip_config.json beside the file to say so",
            path, arch, ", ".join(tags), arch, arch, QUICK_GELU_SUFFIX,
        )  # fmt: skip
    return None


def _act(quick: bool) -> str:
    return "QuickGELU" if quick else "GELU"


def activation_of(model: Any) -> str:
    """The MLP activation of a CLIP image encoder: 'quick_gelu', 'gelu', 'gelu_tanh', ..."""
    from open_clip.transformer import QuickGELU
    from torch import nn

    for module in model.visual.modules():
        if isinstance(module, QuickGELU):
            return "quick_gelu"
        if isinstance(module, nn.GELU):
            return "gelu" if module.approximate == "none" else f"gelu_{module.approximate}"
    return "unknown"
