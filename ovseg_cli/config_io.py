"""Config dataclasses to and from YAML and command-line values: types checked, unknown keys refused.

The settings themselves are declared in ``ovseg_cli.config``; this module reads them from a
YAML file and the command line (defaults, then the file, then overrides) and writes the
resolved values that every run and checkpoint keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ovseg_cli.errors import OvsegError, did_you_mean

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Convert a YAML or command-line value to the declared type of a setting."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        # "none" is a real value of some text settings (--pretrained none): only null clears them
        empty = ("null", "") if inner[0] is str else ("none", "null", "")
        is_none = value is None or (isinstance(value, str) and value.lower() in empty)
        if is_none and type(None) in args:
            return None
        if len(inner) == 1:
            return coerce(value, inner[0], key, source)
        for kind in inner:  # int | str: "4" is 4, "auto" stays text
            try:
                return coerce(value, kind, key, source)
            except OvsegError:
                continue
        names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in inner)
        raise OvsegError(f"{source}: {key} must be {names}, not {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise OvsegError(f"{source}: {key} must be a mapping of settings")
        return from_mapping(annotation, value, source=source, prefix=f"{key}.")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):  # nan and inf pass every range check silently
                raise OvsegError(f"{source}: {key} must be a finite number, not {value!r}")
            return number
        if annotation is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if origin in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            conv = [coerce(v, args[0], key, source) for v in items]
            return tuple(conv) if origin is tuple else conv
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise OvsegError(f"{source}: {key} must be {name}, not {value!r}") from None
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str, prefix: str = "") -> T:
    """Build a config dataclass from a mapping, refusing unknown keys with a suggestion."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in names:
            raise OvsegError(
                f"{source}: unknown setting {prefix + str(key)!r}" + did_you_mean(norm, names)
            )
        values[norm] = coerce(value, hints[norm], f"{prefix}{norm}", source)
    return cls(**values)


@functools.cache
def _unique_key_loader() -> type:
    """YAML's safe loader, refusing a key given twice in a mapping (it would keep the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: list[Any] = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (line {line})", key_node.start_mark
                    )
                seen.append(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise OvsegError(f"{p} is a folder, not a config file")
    if not p.is_file():
        raise OvsegError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OvsegError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OvsegError(f"{p}: a config file must hold a mapping of settings")
    return data


def resolve(
    cls: type[T], config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> T:
    """Defaults, then the YAML file, then explicit overrides (None values are ignored)."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(load_yaml(config_file))
    source = str(config_file) if config_file is not None else "settings"
    base = from_mapping(cls, merged, source=source)
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not extra:
        return base
    return from_mapping(cls, {**to_dict(base), **extra}, source="command line")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (for JSON/YAML; tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def load_sections(
    path: str | Path | None, sections: Mapping[str, type]
) -> dict[str, dict[str, Any]]:
    """The named sections of a config file of several (empty without a file); an unknown
    section or one that is not a mapping is refused with a suggestion."""
    data = load_yaml(path) if path is not None else {}
    for key in data:
        if key not in sections:
            names = " and ".join(f"'{name}:'" for name in sections)
            raise OvsegError(
                f"{path}: unknown section {key!r}" + did_you_mean(str(key), list(sections))
                + f"; the file has {names} sections"
            )  # fmt: skip
        if not isinstance(data[key], dict):
            raise OvsegError(f"{path}: section {key!r} must be a mapping of settings")
    return {name: dict(data.get(name) or {}) for name in sections}
