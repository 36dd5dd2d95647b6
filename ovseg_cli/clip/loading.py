"""One entry point for CLIP: ``load_clip(arch, pretrained)`` through open_clip's own registry.

Weights come from an open_clip tag (looked up in the Hugging Face cache and open_clip's
URL cache before any download is tried), a local file, a local folder holding an
``open_clip_config.json``, or ``hf-hub:ORG/NAME``; ``none`` means random weights. The
project's tiny test architecture ``ovseg-tiny`` is registered as a config file, the
open_clip way, not forked into code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ovseg_cli.clip.cache import (
    cached_hub_snapshot,
    cached_weights,
    download_tag,
    hub_cache,
    hub_offline,
    quiet_open_clip,
    reachable,
)
from ovseg_cli.clip.weights import QUICK_GELU_SUFFIX, activation_of, weights_quick_gelu
from ovseg_cli.errors import OvsegError, did_you_mean

log = logging.getLogger("ovseg")

PROJECT_CONFIGS = Path(__file__).parent.parent / "model_configs"
RANDOM_WEIGHTS = "none"
HF_PREFIX = "hf-hub:"

_registered = False


def register_project_configs() -> None:
    """Make ovseg's own architectures (``ovseg-tiny``) known to open_clip; idempotent."""
    global _registered
    if _registered:
        return
    import open_clip

    for cfg in sorted(PROJECT_CONFIGS.glob("*.json")):
        open_clip.add_model_config(cfg)
    _registered = True


@dataclass
class ClipBundle:
    """A frozen open_clip model with its tokenizer and where its weights came from."""

    model: Any  # open_clip.CLIP, eval mode, no gradients
    tokenizer: Any
    arch: str
    pretrained: str
    weights: str  # the file that was loaded, or "random"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def activation(self) -> str:
        """The image encoder's MLP activation: 'quick_gelu' or 'gelu' (for meta.json)."""
        return activation_of(self.model)

    @property
    def random_init(self) -> bool:
        """True when no pretrained weights were loaded."""
        return self.weights == "random"

    @property
    def visual(self) -> Any:
        """The image encoder."""
        return self.model.visual

    @property
    def native_size(self) -> int:
        """Short side of the image size the CLIP was trained at."""
        return min(self.model.visual.image_size)

    @property
    def patch_size(self) -> int:
        """Patch size of the ViT image encoder."""
        return self.model.visual.patch_size[0]


def dense_capable(model_cfg: dict[str, Any]) -> bool:
    """Whether ovseg can run an architecture's image encoder densely (open_clip's own ViT)."""
    vision = model_cfg.get("vision_cfg", {})
    text = model_cfg.get("text_cfg", {})
    custom = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn", "scale_fc")
    return (
        isinstance(vision.get("layers"), int)
        and "timm_model_name" not in vision
        and not vision.get("attentional_pool")
        and vision.get("pool_type", "tok") == "tok"
        and not any(vision.get(k) for k in custom)
        and "hf_model_name" not in text
        and "hf_tokenizer_name" not in text
        and "multimodal_cfg" not in model_cfg
    )


def list_architectures(dense_only: bool = True) -> list[str]:
    """Architectures open_clip knows (plus ovseg's own), optionally only dense-capable ones."""
    register_project_configs()
    import open_clip

    names = open_clip.list_models()
    if not dense_only:
        return names
    return [n for n in names if dense_capable(open_clip.get_model_config(n) or {})]


def list_tags(arch: str) -> list[str]:
    """Pretrained tags open_clip lists for an architecture."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def _preprocess_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}


_TORCH_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def tensors_only_loading() -> Iterator[None]:
    """Inside, every ``torch.load`` (open_clip's included) unpickles tensors and nothing else.

    ovseg's promise that a weights file never runs code must not rest on what a given
    open_clip version asks torch for (2.26 asked for full unpickling), so whatever the caller
    passes, ``weights_only=True`` is what torch gets.
    """
    import torch

    original = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
        # no pickle_module: only torch's restricted unpickler, never the caller's
        kwargs["weights_only"] = True
        return original(f, map_location, **kwargs)

    with _TORCH_LOAD_LOCK:
        torch.load = load
        try:
            yield
        finally:
            torch.load = original


def _create(name: str, **kwargs: Any) -> Any:
    import open_clip

    with quiet_open_clip(), tensors_only_loading():
        return open_clip.create_model(name, device="cpu", **kwargs)


def _create_random(arch: str, seed: int = 0, **kwargs: Any) -> Any:
    """Random weights from a fixed seed: a model trained on them can be rebuilt exactly."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _create(arch, **kwargs)


def _load_failure(exc: Exception, path: Path) -> str:
    """Why a weights file did not load, as one whole clause (never cut mid-sentence)."""
    import pickle

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) and not _pickle_like(path):
        return "it is no weights file (neither safetensors nor a PyTorch checkpoint)"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "it is a pickle file holding code or objects besides tensors, which ovseg never "
            "loads (that could run code); convert it to .safetensors"
        )
    if "Error(s) in loading state_dict" in text:
        missing = "Missing key(s)" in text
        unexpected = "Unexpected key(s)" in text
        shapes = "size mismatch" in text
        what = [w for w, hit in (("keys missing", missing), ("unexpected keys", unexpected),
                                 ("tensor shapes differ", shapes)) if hit]  # fmt: skip
        return f"its tensors do not fit this architecture ({', '.join(what) or 'mismatch'})"
    first = (text.splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first if len(first) <= 160 else first[:157] + '...'}"


def _pickle_like(path: Path) -> bool:
    """Whether a file starts as a pickle (protocol 2 or later) or a torch zip does."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return True  # say nothing more than the loader did
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def _load_file(arch: str, path: Path, **kwargs: Any) -> Any:
    """Build ``arch`` and load a local weights file into it, refusing anything else."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not for users
            warnings.simplefilter("ignore")
            return _create(arch, pretrained=str(path), **kwargs)
    except Exception as exc:
        raise OvsegError(
            f"{path} is not a CLIP checkpoint for {arch}: {_load_failure(exc, path)}"
        ) from None


def load_clip(
    arch: str = "ViT-B-16",
    pretrained: str = "openai",
    *,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> ClipBundle:
    """Create a frozen open_clip model and its tokenizer, with clear errors for every failure."""
    register_project_configs()
    import open_clip

    if arch.startswith(HF_PREFIX) or pretrained.startswith(HF_PREFIX):
        # an open_clip hub repository carries its own architecture config and weights
        name = arch if arch.startswith(HF_PREFIX) else pretrained
        model, source = _load_hub_repo(name, cache_dir)
        weights = name
    else:
        model, weights, source = _load_arch(arch, pretrained, cache_dir)
        # "NAME-quickgelu" built from NAME keeps its name, so it is rebuilt the same way
        name = arch if source == arch.removesuffix(QUICK_GELU_SUFFIX) else source
    _check_dense_model(model, name)
    model = model.to(device).eval().requires_grad_(False)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    with quiet_open_clip():
        tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
    if weights == "random":
        log.warning(
            "CLIP %s has RANDOM weights (--pretrained none): its output is meaningless; "
            "use this only for tests and benchmarks",
            arch,
        )
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        arch=name,
        pretrained=pretrained if not arch.startswith(HF_PREFIX) else arch,
        weights=weights,
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
    )


def _load_arch(arch: str, pretrained: str, cache_dir: str | None) -> tuple[Any, str, str]:
    """(model, weights, open_clip name) for a registered architecture and a tag, file or folder."""
    import open_clip

    known = open_clip.list_models()
    base = arch.removesuffix(QUICK_GELU_SUFFIX)
    if arch not in known and base != arch and base in known:
        # the explicit QuickGELU choice, for architectures without a -quickgelu config
        return _load_arch_quick_gelu(base, pretrained, cache_dir, arch)
    if arch not in known:
        raise OvsegError(
            f"unknown CLIP architecture {arch!r}"
            + did_you_mean(arch, known)
            + "; `ovseg models` lists the usable ones"
        )
    arch_cfg = open_clip.get_model_config(arch) or {}
    if not dense_capable(arch_cfg):
        raise OvsegError(
            f"{arch} has an image encoder ovseg cannot run densely (it needs an open_clip "
            "ViT with a class token, e.g. ViT-B-16); `ovseg models` lists the usable ones"
        )
    path = Path(pretrained).expanduser()
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
    if pretrained.lower() == RANDOM_WEIGHTS:
        return _create_random(arch), "random", arch
    if tag_cfg:
        kwargs: dict[str, Any] = {"force_preprocess_cfg": _preprocess_of(tag_cfg)}
        if tag_cfg.get("quick_gelu") and not arch_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True  # e.g. OpenAI's weights were trained with it
        local = cached_weights(arch, pretrained, cache_dir) or download_tag(
            arch, pretrained, tag_cfg, cache_dir
        )
        return _load_file(arch, local, **kwargs), str(local), arch
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise OvsegError(f"{path} is a folder without open_clip_config.json")
        source = f"local-dir:{path}"
        try:
            return _create(source), str(path), source
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OvsegError(f"could not load CLIP from {path}: {first[:200]}") from None
    if path.is_file():
        return _load_bare_file(arch, arch_cfg, path), str(path), arch
    if os.sep in pretrained or path.suffix:
        raise OvsegError(f"--pretrained file not found: {path}")
    tags = list_tags(arch)
    raise OvsegError(
        f"unknown pretrained tag {pretrained!r} for {arch}"
        + did_you_mean(pretrained, tags)
        + (f"; known tags: {', '.join(tags)}" if tags else "; it has no published weights")
        + ", or pass a local file"
    )


def _load_arch_quick_gelu(
    base: str, pretrained: str, cache_dir: str | None, name: str
) -> tuple[Any, str, str]:
    """``NAME-quickgelu`` where open_clip only knows NAME: NAME built with QuickGELU."""
    path = Path(pretrained).expanduser()
    if pretrained.lower() == RANDOM_WEIGHTS:
        return _create_random(base, quick_gelu=True), "random", base
    if path.is_file():
        return _load_file(base, path, quick_gelu=True), str(path), base
    raise OvsegError(
        f"{name}: a -quickgelu name open_clip does not have takes a local file or 'none', "
        f"not {pretrained!r}"
    )


def _load_bare_file(arch: str, arch_cfg: dict[str, Any], path: Path) -> Any:
    """A local weights file, built with the activation its weights were trained with."""
    quick = weights_quick_gelu(arch, bool(arch_cfg.get("quick_gelu")), path)
    return _load_file(arch, path, **({} if quick is None else {"quick_gelu": quick}))


def _load_hub_repo(model_name: str, cache_dir: str | None) -> tuple[Any, str]:
    """(model, open_clip name) from ``hf-hub:ORG/NAME``: the cache first, else a download."""
    from huggingface_hub import constants

    repo = model_name[len(HF_PREFIX) :]
    snapshot = cached_hub_snapshot(repo, cache_dir)
    if snapshot is not None:
        # load the cached snapshot as a local folder: no network round trip, works offline
        name = f"local-dir:{snapshot}"
    else:
        where = Path(hub_cache(cache_dir)) / ("models--" + repo.replace("/", "--"))
        advice = "download it on a connected machine, or pass --pretrained with a local file"
        if hub_offline():
            raise OvsegError(
                f"{model_name} is not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE is "
                f"set; {advice}"
            )
        if not reachable(constants.ENDPOINT):
            raise OvsegError(
                f"{model_name} is not in the Hugging Face cache ({where}) and "
                f"{urlparse(constants.ENDPOINT).hostname} cannot be reached; {advice}"
            )
        name = model_name
    try:
        model = _create(name, cache_dir=cache_dir, require_pretrained=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OvsegError(f"could not load {model_name}: {first[:200]}") from None
    return model, name


def _check_dense_model(model: Any, name: str) -> None:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    visual = getattr(model, "visual", None)
    ok = (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks)
    )
    if not ok:
        raise OvsegError(
            f"{name} has an image encoder ovseg cannot run densely (it needs an open_clip ViT "
            "with a class token, e.g. ViT-B-16)"
        )


def save_random_weights(arch: str, path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised open_clip model to a local file (tests, benchmarks)."""
    register_project_configs()
    from safetensors.torch import save_file

    model = _create_random(arch, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    save_file(state, str(out))
    return out
