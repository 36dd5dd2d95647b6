"""A checkpoint's two files, ``NAME.safetensors`` and ``NAME.json``, written as one atomic unit.

The metadata carries the SHA-256 of the weights and is renamed last. While a new pair
replaces an old one, the old weights stay beside them as ``.NAME.safetensors.<digest>``
until the new metadata is in place, so a reader (or a SIGKILL at any instant) finds either
the old pair or the new pair, never weights and metadata of different steps:

1. the new weights and metadata are written to temporary files;
2. the old weights are renamed to their backup name (its digest is in the old metadata);
3. the new weights, then the new metadata, are renamed into place;
4. the backup is deleted.

``resolve_weights`` picks the file whose digest the metadata declares, and
``repair`` finishes or undoes a save that was cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import writer_gone

log = logging.getLogger("ovseg")

DIGEST_KEY = "weights_sha256"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _backup(weights: Path, digest: str) -> Path:
    return weights.with_name(f".{weights.name}.{digest[:16]}")


def declared_digest(meta_path: Path) -> str | None:
    """The weights digest a metadata file declares (None: none, or unreadable)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    return digest if isinstance(digest, str) else None


def _remove_stale_temporaries(weights: Path, meta_path: Path) -> None:
    """Temporary files of saves killed before their renames (their writer is gone)."""
    for target in (weights, meta_path):
        prefix = f".{target.name}.tmp-"
        for p in target.parent.glob(f".{target.name}.tmp-*"):
            pid = p.name[len(prefix) :]
            if pid.isdigit() and writer_gone({"pid": int(pid), "host": _host()}):
                p.unlink(missing_ok=True)


def _host() -> str:
    import socket

    return socket.gethostname()


def repair(weights: Path, meta_path: Path) -> None:
    """Bring a pair whose save was cut short back to a consistent state."""
    _remove_stale_temporaries(weights, meta_path)
    digest = declared_digest(meta_path)
    if digest is None:
        return
    backup = _backup(weights, digest)
    if backup.exists() and (not weights.exists() or sha256_file(weights) != digest):
        os.replace(backup, weights)  # killed between steps 2 and 3: the old pair comes back
    for p in weights.parent.glob(f".{weights.name}.*"):
        if not p.name.startswith(f".{weights.name}.tmp-"):
            p.unlink(missing_ok=True)  # killed before step 4: the backup is done with


def write_pair(
    weights: Path,
    meta_path: Path,
    write_weights: Callable[[Path], None],
    meta: dict,
) -> None:
    """Write weights and metadata (which gains the weights' digest) as one atomic unit."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    repair(weights, meta_path)
    tmp_w, tmp_m = _tmp_name(weights), _tmp_name(meta_path)
    try:
        write_weights(tmp_w)
        meta = {**meta, DIGEST_KEY: sha256_file(tmp_w)}
        tmp_m.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        old = declared_digest(meta_path) if weights.exists() else None
        backup = _backup(weights, old) if old else None
        if backup is not None:
            os.replace(weights, backup)
        os.replace(tmp_w, weights)
        os.replace(tmp_m, meta_path)
        if backup is not None:
            backup.unlink(missing_ok=True)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_m.unlink(missing_ok=True)


def has_backup(weights: Path, meta_path: Path) -> bool:
    """Whether the old weights the metadata names wait under their backup name (a save is on)."""
    digest = declared_digest(meta_path)
    return digest is not None and _backup(weights, digest).is_file()


def resolve_weights(weights: Path, meta_path: Path, meta: dict) -> Path:
    """The weights file that belongs to ``meta``: checked by digest when it declares one."""
    digest = meta.get(DIGEST_KEY)
    if not isinstance(digest, str):
        # written before digests were recorded, or the field was removed: loads, but say so
        log.warning(
            "%s records no %s: %s cannot be verified as this checkpoint's weights "
            "(save it again with this version of ovseg to record it)",
            meta_path.name, DIGEST_KEY, weights.name,
        )  # fmt: skip
        return weights
    with contextlib.suppress(OSError):
        if sha256_file(weights) == digest:
            return weights
    backup = _backup(weights, digest)
    with contextlib.suppress(OSError):
        if sha256_file(backup) == digest:
            return backup  # a save is under way or was cut short: the old pair is intact
    raise OvsegError(
        f"{weights} does not belong with {meta_path.name}: it is truncated or not a safetensors "
        "file of this checkpoint (its SHA-256 differs from the one the metadata records)"
    )
