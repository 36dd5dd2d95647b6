"""`ovseg segment --checkpoint` and `ovseg models --checkpoint` end to end."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ovseg_cli.cli import app

runner = CliRunner()


def test_segment_with_a_checkpoint(
    tmp_path: Path, small_video: Path, tiny_checkpoint: Path
) -> None:
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["segment", str(small_video), "-c", "road,sky,tree", "--checkpoint", str(tiny_checkpoint),
         "--masks", "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with av.open(str(out / "overlay.mp4")) as c:
        v = c.streams.video[0]
        assert sum(1 for _ in c.decode(v)) == 12 and v.average_rate == Fraction(30000, 1001)
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 12
    assert all(np.asarray(Image.open(m)).max() < 3 for m in masks)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["kind"] == "ov2vss"
    assert meta["model"]["checkpoint"] == str(tiny_checkpoint)
    assert meta["model"]["trained_classes"] == ["road", "sky"]
    assert meta["model"]["model_config"]["gap"] == 3
    assert meta["model"]["size"] == 64


def test_checkpoint_errors_are_one_line(
    tmp_path: Path, small_video: Path, tiny_checkpoint: Path
) -> None:
    cases = [
        (["--checkpoint", str(tmp_path / "none.safetensors")], "checkpoint file not found"),
        (
            ["--checkpoint", str(tiny_checkpoint), "--clip", "ViT-B-16"],
            "trained with CLIP ovseg-tiny",
        ),
        (["--checkpoint", str(tiny_checkpoint), "--size", "70"], "multiple of 32"),
    ]
    for extra, message in cases:
        out = tmp_path / "o"
        res = runner.invoke(app, ["segment", str(small_video), "-c", "a", "-o", str(out), *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert "Traceback" not in res.output and not out.exists()


def test_models_describes_a_checkpoint(tiny_checkpoint: Path) -> None:
    res = runner.invoke(app, ["models", "--checkpoint", str(tiny_checkpoint)])
    assert res.exit_code == 0, res.output
    for text in ("parameters", "trainable", "clip (frozen)", "stcf", "GFLOPs",
                 "spatial-temporal fusion (III-A)", "video text encoding (III-C)"):  # fmt: skip
        assert text in res.output, text
