"""Where CLIP weights are found: open_clip's registry, the Hugging Face cache, open_clip's URL
cache, and (when allowed and reachable) a download; offline, a clear error naming the places
looked in and what to do instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ovseg_cli.errors import OvsegError

# open_clip's default location for weights fetched by URL rather than from the hub
URL_CACHE = Path("~/.cache/clip").expanduser()


def _hub_file(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) of a tag's weights on the Hugging Face hub."""
    hub = cfg.get("hf_hub")
    if not hub:
        return None
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    # open_clip's convention: "org/repo/" means the default file name, "org/repo/file" a given one
    repo, filename = os.path.split(hub)
    if filename:
        stem, ext = os.path.splitext(filename)
        names = [stem + ".safetensors", filename] if ext in (".bin", ".pth") else [filename]
    else:
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    return repo, names


def weight_locations(arch: str, tag: str, cache_dir: str | None = None) -> list[str]:
    """Places where the weights of (arch, tag) are looked for, for messages."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    places = []
    hub = _hub_file(cfg)
    if hub:
        base = Path(hub_cache(cache_dir))
        folder = "models--" + hub[0].replace("/", "--")
        places.append(f"{base / folder} ({' or '.join(hub[1])})")
    elif cfg.get("url"):
        places.append(str(Path(cache_dir or URL_CACHE) / os.path.basename(cfg["url"])))
    return places


def hub_cache(cache_dir: str | None = None) -> str:
    """The Hugging Face cache folder: ``cache_dir``, else the hub's, read now.

    Passed explicitly to every lookup, so ovseg looks where it says it looks: in
    huggingface_hub 0.20-0.24 (at least) a lookup's default was fixed at import.
    """
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def cached_weights(arch: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The local file holding (arch, tag) weights, if already downloaded; never downloads."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = _hub_file(cfg)
    if hub:
        for name in hub[1]:
            found = try_to_load_from_cache(hub[0], name, cache_dir=hub_cache(cache_dir))
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    elif cfg.get("url"):
        # only URL-only tags: open_clip fetches OpenAI's TorchScript .pt files from the hub instead
        local = Path(cache_dir or URL_CACHE) / os.path.basename(cfg["url"])
        if local.is_file():
            return local
    return None


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network access."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "ON", "YES", "TRUE")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP check, so a machine without network fails in seconds, not after retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what we cannot; let the download try
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """open_clip and huggingface_hub log to the root logger; keep the terminal clean."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def download_tag(arch: str, tag: str, cfg: dict[str, Any], cache_dir: str | None) -> Path:
    """Fetch a tag's weights into the usual caches, or explain why that is impossible."""
    import open_clip
    from huggingface_hub import constants

    where = "; ".join(weight_locations(arch, tag, cache_dir))
    advice = (
        "Download them on a connected machine (open_clip caches them there), or pass a local "
        "file: --pretrained /path/to/weights.safetensors (see `ovseg models`)"
    )
    if hub_offline():
        raise OvsegError(
            f"CLIP weights {arch}/{tag} are not in the local cache and HF_HUB_OFFLINE is set; "
            f"looked in: {where}. {advice}"
        )
    source = constants.ENDPOINT if cfg.get("hf_hub") else cfg.get("url", constants.ENDPOINT)
    if not reachable(source):
        host = urlparse(source).hostname
        raise OvsegError(
            f"CLIP weights {arch}/{tag} are not in the local cache and {host} cannot be reached; "
            f"looked in: {where}. {advice}"
        )
    try:
        with quiet_open_clip():
            path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200]
        raise OvsegError(
            f"could not download CLIP weights {arch}/{tag}: {reason}. {advice}"
        ) from None
    if not path or not Path(path).is_file():
        raise OvsegError(f"could not download CLIP weights {arch}/{tag}. {advice}")
    return Path(path)


def cached_hub_snapshot(repo: str, cache_dir: str | None) -> Path | None:
    """The cached snapshot folder of an open_clip hub repo, if its config and weights are there."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    config = try_to_load_from_cache(repo, HF_CONFIG_NAME, cache_dir=hub_cache(cache_dir))
    if not isinstance(config, str):
        return None
    for name in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        found = try_to_load_from_cache(repo, name, cache_dir=hub_cache(cache_dir))
        if isinstance(found, str) and Path(found).parent == Path(config).parent:
            return Path(config).parent
    return None
