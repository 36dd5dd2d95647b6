"""Overlays, palette PNG masks and CVAT label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ovseg_cli.classes import UNLABELLED
from ovseg_cli.video.rendering import (
    OverlayRenderer,
    labelmap_text,
    palette_bytes,
    render_legend,
    save_palette_png,
)

COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200)]


def test_palette_png_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 3, (37, 53), dtype=np.uint8)
    mask[0, 0] = UNLABELLED
    save_palette_png(mask, palette_bytes(COLORS), tmp_path / "m.png")
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and img.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(img), mask)
    pal = np.asarray(img.getpalette()[:9]).reshape(3, 3)
    np.testing.assert_array_equal(pal, np.asarray(COLORS))
    rgb = np.asarray(img.convert("RGB"))
    assert tuple(rgb[0, 0]) == (0, 0, 0)


def test_labelmap_is_cvat_format() -> None:
    text = labelmap_text(["road", "sky", "a:b"], COLORS)
    lines = text.splitlines()
    assert lines[0] == "# label:color_rgb:parts:actions"
    assert lines[1] == "road:230,25,75::" and lines[3] == "a b:0,130,200::"


def test_overlay_blends_labelled_pixels_only() -> None:
    frame = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 2
    mask[35:, :5] = UNLABELLED
    out = OverlayRenderer(["a", "b", "c"], COLORS, alpha=0.5, legend=False).render(frame, mask)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    np.testing.assert_allclose(out[20, 10], (np.array(COLORS[0]) + 100) / 2, atol=1)
    np.testing.assert_allclose(out[20, 50], (np.array(COLORS[2]) + 100) / 2, atol=1)
    np.testing.assert_array_equal(out[38, 2], frame[38, 2])
    opaque = OverlayRenderer(["a"], COLORS[:1], alpha=1.0, legend=False).render(frame, mask * 0)
    np.testing.assert_array_equal(opaque[0, 0], COLORS[0])


def test_legend_shows_every_class_colour() -> None:
    legend = render_legend(["road", "sky", "horse"], COLORS, 360, 640)
    assert legend.shape[2] == 4 and legend.shape[0] < 360 and legend.shape[1] < 640
    found = {tuple(c) for c in legend[..., :3].reshape(-1, 3)}
    assert all(c in found for c in COLORS)
    frame = np.zeros((360, 640, 3), np.uint8)
    out = OverlayRenderer(["road", "sky", "horse"], COLORS).render(
        frame, np.zeros((360, 640), np.uint8)
    )
    assert out[: legend.shape[0], : legend.shape[1]].max() > 200  # light label text


def test_legend_wraps_many_classes_into_columns() -> None:
    names = [f"class {i}" for i in range(60)]
    colors = [(i * 4, 255 - i * 4, 128) for i in range(60)]
    legend = render_legend(names, colors, 120, 1280)
    assert legend.shape[0] <= 120
    found = {tuple(c) for c in legend[..., :3].reshape(-1, 3)}
    assert all(c in found for c in colors)
