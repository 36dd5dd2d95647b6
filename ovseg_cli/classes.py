"""Class lists typed by users: parsing, validation and stable distinct colours.

``--classes "road,sky,horse"`` or a classes file, one class per line::

    # comments ('#' starting a line, or ' # ' after the content) and blank lines are ignored
    road
    person: person, pedestrian, rider     # prompts whose text embeddings are averaged
    sky: #87ceeb                          # a colour of the class's own
    car: #ff0000, car, automobile

Class index i is pixel value i in the masks; 255 is reserved for "unlabelled".
"""

from __future__ import annotations

import colorsys
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ovseg_cli.errors import OvsegError

MAX_CLASSES = 255  # mask pixels are uint8 and 255 means unlabelled
UNLABELLED = 255
_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")

RGB = tuple[int, int, int]

# Distinct colours first (Kelly's list, minus white and black, which read as "nothing");
# later classes get golden-angle hues, so a class keeps its colour when more are added.
_BASE_COLOURS: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip


@dataclass(frozen=True)
class ClassSpec:
    """One class: its name, the prompts that describe it, and an optional colour."""

    name: str
    prompts: tuple[str, ...] = field(default=())
    color: RGB | None = None

    @property
    def texts(self) -> tuple[str, ...]:
        """Texts to embed: the prompts, or the name itself."""
        return self.prompts or (self.name,)


def default_color(index: int) -> RGB:
    """A stable colour for class ``index``: distinct for the first 20, golden-angle hues after."""
    if index < len(_BASE_COLOURS):
        return _BASE_COLOURS[index]
    hue = (index * 0.618033988749895) % 1.0
    sat = 0.65 + 0.3 * ((index // 7) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def colors_for(specs: Sequence[ClassSpec]) -> list[RGB]:
    """The colour of each class: its own if given, else the default for its index."""
    return [s.color or default_color(i) for i, s in enumerate(specs)]


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def readable(name: str) -> str:
    """A dataset's class name as a prompt: underscores as spaces (VSPW's "Playground_slide")."""
    return " ".join(str(name).replace("_", " ").split())


def name_key(name: str) -> str:
    """A class name as names from different sources are matched: case, underscores and runs
    of spaces aside."""
    return readable(name).lower()


def _check_printable(spec: ClassSpec, source: str) -> None:
    """Refuse control characters: they end up in labelmap.txt, meta.json and exports."""
    for text in (spec.name, *spec.prompts):
        bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            hint = " (a UTF-16 file? save it as UTF-8)" if bad == "\x00" else ""
            raise OvsegError(
                f"{source}: class {spec.name!r} contains the control character "
                f"U+{ord(bad):04X}{hint}"
            )


def _validated(specs: list[ClassSpec], source: str) -> list[ClassSpec]:
    if not specs:
        raise OvsegError(f"{source}: no class names given")
    if len(specs) > MAX_CLASSES:
        raise OvsegError(
            f"{source}: {len(specs)} classes given; at most {MAX_CLASSES} fit in a mask"
        )
    seen: dict[str, str] = {}
    for spec in specs:
        _check_printable(spec, source)
        if ":" in spec.name:  # CVAT's labelmap and our own syntax use it as a separator
            raise OvsegError(f"{source}: class name {spec.name!r} contains ':'")
        k = _key(spec.name)
        if k in seen:
            raise OvsegError(f"{source}: class {spec.name!r} is named twice")
        seen[k] = spec.name
    return specs


def parse_classes(text: str) -> list[ClassSpec]:
    """Parse a comma-separated class list such as ``"road,sky: #87ceeb,person: pedestrian"``.

    Each item is read like a classes-file line: ``name``, ``name: #rrggbb`` or
    ``name: prompt`` (a comma starts the next class, so one prompt or colour each).
    """
    if not text or not text.strip():
        raise OvsegError("--classes is empty: give class names separated by commas")
    parts = text.split(",")
    specs = []
    for i, part in enumerate(parts, start=1):
        where = f"--classes: class {i} of {len(parts)}"
        spec = parse_class_line(part, where) if part.strip() else None
        if spec is None:
            raise OvsegError(f"{where} is empty (stray comma?)")
        specs.append(spec)
    return _validated(specs, "--classes")


def parse_class_line(line: str, where: str) -> ClassSpec | None:
    """One line of a classes file (``name`` or ``name: [#rrggbb,] prompt, ...``); None if blank."""
    # a comment is a line starting with '#', or ' # ...' after the content; '#rrggbb' is a colour
    text = re.sub(r"^\s*#.*$|\s+#(\s.*)?$", "", line).strip()
    if not text:
        return None
    name, sep, rest = text.partition(":")
    name = " ".join(name.split())
    if not name:
        raise OvsegError(f"{where}: the class name before ':' is empty")
    color: RGB | None = None
    prompts: list[str] = []
    if rest.strip():
        for item in (" ".join(p.split()) for p in rest.split(",")):
            if not item:
                raise OvsegError(f"{where}: empty prompt (stray comma?)")
            m = _HEX.match(item)
            if m:
                if color is not None:
                    raise OvsegError(f"{where}: two colours for {name!r}")
                color = tuple(bytes.fromhex(m.group(1)))  # type: ignore[assignment]
            elif item.startswith("#"):
                raise OvsegError(f"{where}: invalid colour {item!r} (use #rrggbb)")
            else:
                prompts.append(item)
    elif sep:
        raise OvsegError(f"{where}: nothing after ':' for {name!r}")
    return ClassSpec(name=name, prompts=tuple(prompts), color=color)


def read_classes_file(path: str | Path) -> list[ClassSpec]:
    """Read a classes file (see the module docstring for the format)."""
    p = Path(path)
    if p.is_dir():
        raise OvsegError(f"--classes-file {p} is a folder, not a classes file")
    if not p.is_file():
        raise OvsegError(f"classes file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise OvsegError(f"{p}: not a UTF-8 text file") from None
    specs = [
        spec
        for n, line in enumerate(lines, start=1)
        if (spec := parse_class_line(line, f"{p}:{n}")) is not None
    ]
    return _validated(specs, str(p))


def background_class(text: str) -> ClassSpec:
    """The catch-all class of ``--background``: ``NAME`` or ``NAME: [#rrggbb,] prompt, ...``.

    With no prompts of its own it is described by its name and the word "background"
    (both averaged like any class's prompts).
    """
    spec = parse_class_line(text, "--background")
    if spec is None:
        raise OvsegError("--background is empty: give the name of the catch-all class")
    if spec.prompts:
        return spec
    generic = () if _key(spec.name) == "background" else ("background",)
    return ClassSpec(spec.name, (spec.name, *generic), spec.color)


def with_background(specs: Sequence[ClassSpec], background: str | None) -> list[ClassSpec]:
    """The classes with the ``--background`` catch-all class appended (last index), if any."""
    specs = list(specs)
    if background is None:
        return specs
    extra = background_class(background)
    for s in specs:
        if _key(s.name) == _key(extra.name):
            raise OvsegError(
                f"--background {extra.name!r} is already one of the classes; "
                "name the catch-all class differently"
            )
    return _validated([*specs, extra], "--background")


def resolve_classes(
    classes: str | Sequence[str | ClassSpec] | None, classes_file: str | Path | None
) -> list[ClassSpec]:
    """Class specs from ``--classes`` (a string or a list) or ``--classes-file``, exactly one of them."""
    if classes is not None and classes_file is not None:
        raise OvsegError("give --classes or --classes-file, not both")
    if classes_file is not None:
        return read_classes_file(classes_file)
    if classes is None:
        raise OvsegError('no classes: pass --classes "road,sky,..." or --classes-file FILE')
    if isinstance(classes, str):
        return parse_classes(classes)
    specs: list[ClassSpec] = []
    for i, c in enumerate(classes, start=1):
        spec = c if isinstance(c, ClassSpec) else parse_class_line(str(c), f"classes: class {i}")
        if spec is None or not spec.name:
            raise OvsegError(f"classes: class {i} of {len(classes)} is empty")
        specs.append(spec)
    return _validated(specs, "classes")
