"""One config per run: YAML + overrides, unknown keys refused with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import dump_yaml, load_yaml, resolve, to_dict
from ovseg_cli.errors import OvsegError


def test_defaults_follow_the_paper() -> None:
    from ovseg_cli.segment.protocol import DEFAULT_CLIP, DEFAULT_PRETRAINED

    cfg = SegmentConfig()
    assert cfg.clip is None and cfg.pretrained is None  # ViT-B-16/openai, or the checkpoint's
    assert (DEFAULT_CLIP, DEFAULT_PRETRAINED) == ("ViT-B-16", "openai")
    assert cfg.temporal and cfg.overlay and not cfg.masks and cfg.checkpoint is None
    # the best CLIP-only method by published numbers, with the references' templates
    assert (cfg.dense_method, cfg.templates) == ("scclip", "imagenet")


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("size: 320\ntemporal-strength: 0.25\nmasks: yes\nend: 2\n")
    cfg = resolve(SegmentConfig, f, {"size": 448, "alpha": None})
    assert cfg.size == 448  # the command line wins
    assert cfg.temporal_strength == 0.25 and cfg.masks is True and cfg.end == 2.0
    assert cfg.alpha == 0.5  # None means "not given"


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("temporal_strenght: 0.3\n")
    with pytest.raises(OvsegError, match=r"unknown setting .temporal_strenght.*temporal_strength"):
        resolve(SegmentConfig, f)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size: big\n", "size must be int"),
        ("alpha: 2\n", "alpha must be between 0 and 1"),
        ("dense_method: clearclp\n", "did you mean 'clearclip'"),
        ("- a\n- b\n", "must hold a mapping"),
        ("size: [1\n", "not valid YAML"),
        ("start: 3\nend: 1\n", "end .* must be after start"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(OvsegError, match=message) as info:
        resolve(SegmentConfig, f)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = SegmentConfig(size=256, end=1.5, templates="single")
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert resolve(SegmentConfig, tmp_path / "c.yaml") == cfg
    assert to_dict(cfg)["size"] == 256


def test_none_is_a_value_of_text_settings() -> None:
    """`--pretrained none` means random weights, not "not given"; numbers take none as unset."""
    cfg = resolve(SegmentConfig, None, {"pretrained": "none", "end": "none", "window": "null"})
    assert cfg.pretrained == "none" and cfg.end is None and cfg.window is None
