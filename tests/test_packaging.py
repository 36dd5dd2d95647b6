"""The declared dependencies: each lower bound is what CI's lowest environment installs."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints-lowest.txt"
PYPROJECT = ROOT / "pyproject.toml"


def _requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares, extras included (read from the file, not
    from installed metadata, which is as old as the last install)."""
    text = PYPROJECT.read_text()
    deps = text[text.index("dependencies = [") : text.index("[project.scripts]")]
    quoted = re.findall(r'^\s*"([^"]+)",', deps, flags=re.MULTILINE)
    quoted += re.findall(r'"([^"]+)"(?=[,\]])', "\n".join(
        line for line in deps.splitlines() if "= [" in line and not line.startswith("dependencies")
    ))  # fmt: skip
    return [Requirement(q) for q in dict.fromkeys(quoted)]


def _lower_bounds() -> dict[str, Version]:
    """Name -> the >= bound of every requirement ovseg declares (extras included)."""
    bounds = {}
    for req in _requirements():
        if canonicalize_name(req.name) == "ovseg":
            continue  # dev's ovseg[onnx] and ovseg[ray]
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{req}: give exactly one lower bound (>=)"
        bounds[canonicalize_name(req.name)] = floors[0]
    return bounds


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_lower_bound_is_pinned_in_the_lowest_environment() -> None:
    bounds, pins = _lower_bounds(), _pins()
    assert set(bounds) <= set(pins), f"not in {CONSTRAINTS.name}: {set(bounds) - set(pins)}"
    for name, floor in bounds.items():
        pin = pins[name]
        # the pin is the bound's first release: 4.8 -> 4.8.0.74, 2.12 -> 2.12.0
        assert pin >= floor and pin.release[: len(floor.release)] == floor.release, (
            f"{name}: pyproject says >={floor}, the lowest environment installs {pin}"
        )


def test_no_upper_bounds_without_a_reason() -> None:
    pyproject = PYPROJECT.read_text()
    for line in pyproject.splitlines():
        if re.search(r'"[^"]*<[^"]*"', line):  # a cap: the reason must sit beside it
            assert "#" in line, f"a cap without its reason: {line.strip()}"
