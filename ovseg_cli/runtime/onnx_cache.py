"""The on-disk cache of exported image towers: one folder per graph, trusted only once checked.

An entry is ``<cache>/onnx/<arch>-<method>-<digest>/`` holding ``model.onnx`` (plus
``model.onnx.data`` for towers over ONNX's 2 GB protobuf limit) and ``entry.json``: the
full key and the size and SHA-256 of every file. The key is everything that shapes the
graph: the architecture and module structure, a hash of every weight byte, the dense
method and the encoder's settings, the intermediate blocks exported, the source of the
code that traces it and the versions of ovseg, torch, open_clip, onnx and onnxscript.

Writes are atomic: the entry is built in a hidden temporary folder beside its final place
and renamed into place whole, so a crash never leaves a half-written entry that looks
complete. Reads are never trusted: an entry whose ``entry.json`` is unreadable, whose key
differs, or whose files differ in size or hash is reported and exported anew. Each graph
also carries its key's digest in its metadata (``GRAPH_KEY_PROP``): ``onnx_session`` checks
it, with the graph's inputs and outputs, once ONNX Runtime has read the graph.

A cache that cannot be written (a read-only file system, a file where the folder should
be) is an ``OvsegError`` naming the folder, so ``--runtime auto`` falls back to torch.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovseg_cli.errors import OvsegError

log = logging.getLogger("ovseg")

CACHE_ENV = "OVSEG_CACHE_DIR"
FORMAT = 2  # bump when an entry's layout or the traced wrapper changes meaning
# 2: graphs carry their key's digest under this metadata name, checked before use
GRAPH_KEY_PROP = "ovseg.graph_key"
MODEL_FILE = "model.onnx"
ENTRY_FILE = "entry.json"
_LEFTOVER_AGE_S = 6 * 3600.0  # temporary folders this old belong to a process that died


def cache_root() -> Path:
    """ovseg's cache folder: $OVSEG_CACHE_DIR, else $XDG_CACHE_HOME/ovseg, else ~/.cache/ovseg."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()) / "ovseg"


def onnx_cache_dir() -> Path:
    """Where exported ONNX graphs are kept."""
    return cache_root() / "onnx"


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every tensor of a module's state: name, dtype, shape and all its bytes.

    Hashing what is in memory (about 1.4 GB/s with SHA-NI: 0.25 s for ViT-B-16) is correct
    for weights from any source (a tag, a file, a hub folder, random, patched in place),
    where a file's path and mtime would miss the last two and could be fooled by a copy.
    """
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def encoder_settings(encoder: nn.Module) -> dict[str, Any]:
    """The encoder's plain public settings (method, patch, grid and any added later)."""
    plain = (bool, int, float, str, tuple, type(None))
    return {
        k: v
        for k, v in sorted(vars(encoder).items())
        if not k.startswith("_") and k != "training" and isinstance(v, plain)
    }


def _source_digest(modules: list[Any]) -> str:
    """SHA-256 of the source files of the code the graph is traced from."""
    h = hashlib.sha256()
    for module in sorted(set(modules), key=lambda m: m.__name__):
        try:
            h.update(Path(inspect.getfile(module)).read_bytes())
        except (OSError, TypeError):  # no source file (frozen app): the versions still count
            h.update(module.__name__.encode())
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def graph_key(encoder: nn.Module, arch: str, layers: tuple[int, ...]) -> dict[str, Any]:
    """Everything that decides the exported graph of ``encoder`` with ``layers`` read out."""
    from ovseg_cli import __version__
    from ovseg_cli.clip import dense_methods
    from ovseg_cli.clip.dense import DENSE_METHODS
    from ovseg_cli.runtime import onnx_export

    method = getattr(encoder, "method", "")
    code = [sys.modules[type(encoder).__module__], onnx_export, dense_methods]
    if method in DENSE_METHODS:  # the method's head may live in a module of its own
        code.append(sys.modules[DENSE_METHODS[method].head.__module__])
    versions = {p: _version(p) for p in ("torch", "open_clip_torch", "onnx", "onnxscript")}
    return {
        "format": FORMAT,
        "arch": arch,
        # repr names every layer type and size (QuickGELU vs GELU share weight shapes)
        "structure": hashlib.sha256(repr(encoder).encode()).hexdigest(),
        "weights": weights_fingerprint(encoder),
        "method": method,
        # as JSON reads it back (tuples become lists), so a stored key compares equal
        "settings": json.loads(json.dumps(encoder_settings(encoder), default=repr)),
        "layers": list(layers),
        "opset": onnx_export.OPSET,
        "code": _source_digest(code),
        "versions": {"ovseg": __version__, **versions},
    }


def key_digest(key: dict[str, Any]) -> str:
    """SHA-256 of a key: its entry's name ends with it and its graph's metadata holds it."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def entry_name(key: dict[str, Any]) -> str:
    """Folder name of a key's entry: readable prefix, then the key's hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{key['arch']}-{key['method']}")[:60]
    return f"{readable}-{key_digest(key)[:20]}"


def report_unusable(folder: Path, why: str) -> None:
    """Warn that an entry cannot be used and is exported again (it is replaced when written)."""
    log.warning("ONNX cache entry %s is unusable (%s); exporting it again", folder, why)


def _file_digest(path: Path) -> tuple[int, str, bytes | None]:
    """(size, SHA-256, content if it is the model file) of a file, reading it once."""
    if path.name == MODEL_FILE:
        data = path.read_bytes()
        return len(data), hashlib.sha256(data).hexdigest(), data
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return path.stat().st_size, h.hexdigest(), None


@dataclass
class CachedGraph:
    """A checked entry: the model's verified bytes, or its path when weights are external."""

    folder: Path
    model_bytes: bytes | None  # what was hashed is what runs: no window to swap the file
    external_data: bool

    @property
    def model_path(self) -> Path:
        """The model file (needed to resolve external weights)."""
        return self.folder / MODEL_FILE


class GraphCache:
    """Exported graphs under one folder, keyed by ``graph_key``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else onnx_cache_dir()

    def folder(self, key: dict[str, Any]) -> Path:
        """The entry folder of a key (it may not exist)."""
        return self.root / entry_name(key)

    def load(self, key: dict[str, Any]) -> CachedGraph | None:
        """The key's entry if present and intact; a damaged or stale one is reported, not used."""
        folder = self.folder(key)
        try:
            if not folder.exists():
                return None
        except OSError:  # an unreadable cache folder: writing the entry says why, or falls back
            return None
        try:
            return self._check(folder, key)
        except _Damaged as exc:
            report_unusable(folder, str(exc))
            return None

    def _check(self, folder: Path, key: dict[str, Any]) -> CachedGraph:
        try:
            entry = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            files = dict(entry["files"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _Damaged(f"no readable {ENTRY_FILE}: {type(exc).__name__}") from None
        if entry.get("key") != key:
            raise _Damaged("it was exported for another model, setting or version")
        if MODEL_FILE not in files:
            raise _Damaged(f"{ENTRY_FILE} lists no {MODEL_FILE}")
        model_bytes = None
        for name, expected in files.items():
            data = _checked_file(folder, name, expected)
            if data is not None:
                model_bytes = data
        external = len(files) > 1
        return CachedGraph(folder, None if external else model_bytes, external)

    @contextlib.contextmanager
    def writing(self, key: dict[str, Any]) -> Iterator[Path]:
        """A fresh temporary folder to export into; on success it becomes the key's entry.

        The entry is renamed into place whole. If another process placed the same entry
        meanwhile, theirs is kept. On failure nothing is left behind. A folder that cannot
        be written is an ``OvsegError`` naming it, raised before the export where it can be.
        """
        name = entry_name(key)
        tmp = self._temporary(name)
        try:
            started = time.perf_counter()
            try:
                yield tmp  # the export writes into tmp: its OSErrors are the cache's too
                files = {}
                for path in sorted(tmp.iterdir()):
                    size, sha, _ = _file_digest(path)
                    files[path.name] = {"size": size, "sha256": sha}
                entry = {
                    "key": key,
                    "files": files,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                _write_json(tmp / ENTRY_FILE, entry)
                self._commit(tmp, self.root / name)
            except OSError as exc:
                raise self._unwritable(exc) from exc
            self._remove_superseded(key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _temporary(self, name: str) -> Path:
        """A new hidden folder under the root to build an entry in (the root made if needed)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            return Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unwritable(self, exc: OSError) -> OvsegError:
        """The one-line error for a cache folder that cannot be written, and why."""
        blocker = _file_in_the_way(self.root)
        why = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        return OvsegError(
            f"cannot write the ONNX cache in {self.root}: {why} "
            f"(set {CACHE_ENV} to a writable folder)"
        )

    def _commit(self, tmp: Path, final: Path) -> None:
        if final.exists():  # damaged or stale: move it aside first, rename is atomic
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=self.root))
            # OSError: another process is replacing it too; the rename below settles it
            with contextlib.suppress(OSError):
                os.replace(final, old / final.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            log.info("ONNX cache entry %s was written by another process; keeping theirs", final)

    def _remove_superseded(self, key: dict[str, Any]) -> None:
        """Entries of the same graph from older code or package versions can never be used
        again by this installation: without this, every upgrade would leave ~300 MB a method."""
        keep = entry_name(key)
        prefix = keep.rsplit("-", 1)[0] + "-"
        for folder in self.root.glob(glob.escape(prefix) + "*"):
            if folder.name == keep:
                continue
            try:
                other = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))["key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a readable entry: not ours to judge
            if isinstance(other, dict) and _same_graph(other, key):
                log.info("removing superseded ONNX cache entry %s", folder)
                shutil.rmtree(folder, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Temporary folders of exports that died (hours old) are removed."""
        now = time.time()
        for path in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _LEFTOVER_AGE_S:
                    shutil.rmtree(path, ignore_errors=True)


# what changes with an upgrade of ovseg or its packages, not with the model or the settings
_VERSIONED = ("code", "versions", "format", "opset")


def _same_graph(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two keys describe the same model and settings, whatever the versions."""
    return {k: v for k, v in a.items() if k not in _VERSIONED} == {
        k: v for k, v in b.items() if k not in _VERSIONED
    }


class _Damaged(Exception):
    """Why a cache entry cannot be trusted."""


def _checked_file(folder: Path, name: str, expected: dict[str, Any]) -> bytes | None:
    """Check one listed file's size and hash; the model file's bytes, else None."""
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise _Damaged(f"{name} is missing")
    try:
        if path.stat().st_size != expected.get("size"):
            raise _Damaged(f"{name} has the wrong size")
        _, sha, data = _file_digest(path)
    except OSError as exc:  # unreadable (permissions, I/O error): not trusted, exported anew
        raise _Damaged(f"{name} cannot be read: {exc.strerror or exc}") from None
    if sha != expected.get("sha256"):
        raise _Damaged(f"{name} does not match its checksum")
    return data


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing path at or above ``folder`` when it is not a folder."""
    for path in (folder, *folder.parents):
        try:
            if path.exists():
                return None if path.is_dir() else path
        except OSError:
            return None
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # no fsync: a file cut short by a crash fails its checksum and is exported again
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
