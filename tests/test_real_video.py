"""Full-size check on a real clip: ViT-B-16 with random weights loaded from a local file."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import shared_file
from PIL import Image
from typer.testing import CliRunner

from ovseg_cli.cli import app

pytestmark = pytest.mark.slow


def test_dog_clip_with_full_size_vit_b16(tmp_path: Path) -> None:
    video = shared_file("videos", "sam2_01_dog.mp4")
    from ovseg_cli.clip.loading import save_random_weights

    weights = save_random_weights("ViT-B-16", tmp_path / "vit-b-16-random.safetensors")
    out = tmp_path / "dog"
    res = CliRunner().invoke(
        app,
        [
            "segment", str(video), "--classes", "person,dog,grass,tree,road",
            "--pretrained", str(weights), "--end", "1", "--masks", "-o", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output

    with av.open(str(out / "overlay.mp4")) as c:
        v = c.streams.video[0]
        assert sum(1 for _ in c.decode(v)) == 30
        assert v.average_rate == Fraction(30000, 1001)
        assert (v.width, v.height) == (1280, 720)
        assert [a.codec_context.name for a in c.streams.audio] == ["aac"]
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 30
    for m in masks[::10]:
        img = Image.open(m)
        assert img.mode == "P" and img.size == (1280, 720) and np.asarray(img).max() < 5
    assert len((out / "labelmap.txt").read_text().splitlines()) == 6
    meta = json.loads((out / "meta.json").read_text())
    # the default short side is 1.5x the CLIP's native one (README, "Resolution")
    assert meta["model"]["clip"] == "ViT-B-16" and meta["model"]["size"] == 336
    assert meta["output"]["frames"] == 30 and meta["input"]["fps"] == "30000/1001"
