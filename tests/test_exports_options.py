"""Class control for `segment`: --threshold, --background, --export, and their bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ovseg_cli import segment_video
from ovseg_cli.classes import (
    UNLABELLED,
    ClassSpec,
    background_class,
    parse_classes,
    with_background,
)
from ovseg_cli.cli import app
from ovseg_cli.config import SegmentConfig
from ovseg_cli.errors import OvsegError
from ovseg_cli.segment.masks import _mask_on_device, logits_to_mask

runner = CliRunner()


@pytest.mark.parametrize("threshold", [0.4, 0.6, 0.8])
def test_threshold_leaves_unsure_pixels_unlabelled(threshold: float) -> None:
    logits = 1.5 * torch.randn(4, 9, 13, generator=torch.Generator().manual_seed(1))
    size = (50, 70)
    mask = logits_to_mask(logits, size, threshold)
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    conf = F.interpolate(torch.softmax(logits, 0).amax(0)[None, None], size=size, mode="bilinear")[
        0, 0
    ]
    expected = np.where(conf.numpy() < threshold, UNLABELLED, up.argmax(0).numpy())
    sure = (conf - threshold).abs().numpy() > 1e-5  # float rounding right at the threshold
    np.testing.assert_array_equal(mask[sure], expected[sure])
    assert 0 < (mask == UNLABELLED).sum() < mask.size
    np.testing.assert_array_equal(logits_to_mask(logits, size), up.argmax(0).numpy())
    confidence = torch.softmax(logits, 0).amax(0)  # the GPU path, run here on the CPU
    np.testing.assert_array_equal(
        _mask_on_device(logits, size, threshold, confidence)[sure], expected[sure]
    )


def test_segment_video_takes_threshold_and_background(small_video: Path, tiny_model) -> None:
    stream = segment_video(
        small_video, "road,sky", model=tiny_model, threshold=0.999, background="other", end=0.1
    )
    results = list(stream)
    assert stream.vocabulary.names == ["road", "sky", "other"]
    assert all((r.mask == UNLABELLED).all() for r in results)  # no class is that sure


def test_background_class_prompts_and_colour() -> None:
    assert background_class("other") == ClassSpec("other", ("other", "background"))
    assert background_class("Background").prompts == ("Background",)
    own = background_class("rest: #404040, wall, floor")
    assert own == ClassSpec("rest", ("wall", "floor"), (64, 64, 64))
    specs = with_background(parse_classes("road,sky"), "other")
    assert [s.name for s in specs] == ["road", "sky", "other"]
    assert with_background(specs, None) == specs
    with pytest.raises(OvsegError, match="'Sky' is already one of the classes"):
        with_background(specs, "Sky")
    with pytest.raises(OvsegError, match="invalid colour"):
        with_background(specs, "rest: #12")


def test_config_normalises_exports_and_checks_threshold() -> None:
    assert SegmentConfig(export="Coco, stats,coco").export == ("coco", "stats")
    assert SegmentConfig(export=["cvat"]).export == ("cvat",)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(OvsegError, match="threshold must be between 0 and 1"):
            SegmentConfig(threshold=bad)


# --- bad input on the command line: one line, exit 2, nothing written --------------------

CLASSES_FILES = {
    "malformed": "road\nsky: blue,, azure\n",
    "bad_colour": "road\nsky: #12345\n",
    "twice": "road\nsky\nroad: street\n",
    "black": "road: #000000\nsky\n",
    "same_colour": "road: #ff0000\nsky: #FF0000\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "a", "--export", "cvta"], "unknown export 'cvta'; known: coco, cvat, stats (did you mean 'cvat'?)"),
        (["-c", "a", "--export", "cvat,,coco"], "export 2 of 3 is empty"),
        (["-c", "a", "--config", "file:yaml"], "unknown export 'json'"),
        (["--classes-file", "file:malformed"], "classes.txt:2: empty prompt"),
        (["--classes-file", "file:bad_colour"], "classes.txt:2: invalid colour '#12345'"),
        (["--classes-file", "file:twice"], "class 'road' is named twice"),
        (["-c", "a", "--threshold", "0"], "threshold must be between 0 and 1"),
        (["-c", "a", "--threshold", "1"], "threshold must be between 0 and 1"),
        (["-c", "a", "--threshold", "1.5"], "threshold must be between 0 and 1"),
        (["-c", "road,sky", "--background", "sky"], "--background 'sky' is already one of"),
        (["-c", "a", "--background", "x: #zz"], "--background: invalid colour '#zz'"),
        (["--classes-file", "file:black", "--export", "cvat"], "colour of CVAT's background"),
        (["--classes-file", "file:same_colour", "--export", "cvat"], "share the colour #ff0000"),
        (["-c", "a", "--no-overlay"], "--no-overlay needs --masks or --export"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, small_video: Path, tiny_weights: Path, args: list[str], message: str
) -> None:
    resolved = []
    for a in args:
        if a == "file:yaml":
            (tmp_path / "run.yaml").write_text("export: [cvat, json]\n")
            a = str(tmp_path / "run.yaml")
        elif a.startswith("file:"):
            (tmp_path / "classes.txt").write_text(CLASSES_FILES[a[5:]])
            a = str(tmp_path / "classes.txt")
        resolved.append(a)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["segment", str(small_video), *resolved, "-o", str(out), "--clip", "ovseg-tiny",
         "--pretrained", str(tiny_weights)],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 3  # one line, perhaps wrapped by the terminal
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
