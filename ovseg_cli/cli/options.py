"""Command-line options made from the config dataclasses: each setting's flag, help and
default are written once, in ``ovseg_cli.config``, and every command that takes the setting
takes it from there (``segment`` and ``eval`` share the stream's options this way)."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import typer

from ovseg_cli.config import default_text, help_text

# settings of SegmentConfig that `segment` and `eval` both take, from this one list
MODEL_OPTIONS = (
    "clip", "pretrained", "checkpoint", "dense_method", "templates", "window", "stride", "refine",
    "temporal",
    "temporal_strength", "temporal_history", "device", "precision", "runtime",
)  # fmt: skip
STREAM_OPTIONS = (
    "keyframe_interval", "max_interval", "bidirectional", "batch", "shot_threshold", "threshold",
)  # fmt: skip


def flag(name: str) -> str:
    """The command-line flag of a setting: ``keyframe_interval`` -> ``--keyframe-interval``."""
    return "--" + name.replace("_", "-")


def option(cls: type, name: str, *decls: str, **kwargs: Any) -> Any:
    """A Typer option whose help and shown default come from setting ``name`` of ``cls``."""
    return typer.Option(
        None,
        *(decls or (flag(name),)),
        help=help_text(cls, name),
        show_default=default_text(cls, name),
        **kwargs,
    )


_METAVARS = {int: "INTEGER", float: "FLOAT"}


def _cli_type(annotation: Any) -> tuple[type, bool, str | None]:
    """(type the CLI parses, is a boolean switch, metavar) for a setting's annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in _METAVARS and type(None) in args:
            # `--window none` as in a config file: the config parses the number or "none"
            return str, False, f"{_METAVARS[inner[0]]}|none"
        annotation = inner[0] if len(inner) == 1 else str  # int | str: parsed by the config
    if typing.get_origin(annotation) in (list, tuple):
        return str, False, None  # comma-separated, split by the config
    return annotation, annotation is bool, None


def config_options(
    cls: type,
    names: Sequence[str],
    short: dict[str, str] | None = None,
    into: str = "settings",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per setting of ``cls`` in ``names``; the command receives the
    ones the user gave as a single mapping (names to raw values), its parameter ``into``."""
    hints = typing.get_type_hints(cls)
    short = short or {}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(fn)
        own_hints = typing.get_type_hints(fn)
        params = [
            p.replace(annotation=own_hints.get(p.name, p.annotation))
            for p in own.parameters.values()
            if p.name != into
        ]
        annotations = {p.name: p.annotation for p in params}
        for name in names:
            kind, switch, metavar = _cli_type(hints[name])
            decls = [f"{flag(name)}/--no-{flag(name)[2:]}" if switch else flag(name)]
            if name in short:
                decls.append(short[name])
            default = option(cls, name, *decls, **({"metavar": metavar} if metavar else {}))
            keyword = inspect.Parameter.KEYWORD_ONLY
            params.append(inspect.Parameter(name, keyword, default=default, annotation=kind))
            annotations[name] = kind

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names if n in kwargs}
            settings = {n: v for n, v in given.items() if v is not None}
            return fn(*args, **{into: settings}, **kwargs)

        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {**annotations, "return": own_hints.get("return")}
        return command

    return decorate
