"""Overlays, palette PNG masks and CVAT label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg_cli.classes import UNLABELLED
from ovseg_cli.exports.cvat import labelmap_text
from ovseg_cli.video.rendering import (
    OverlayRenderer,
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


def test_labelmap_background_line_first_for_cvat_last_for_index_masks() -> None:
    first = labelmap_text(["road", "sky"], COLORS[:2], background="first").splitlines()
    assert first[1:] == ["background:0,0,0::", "road:230,25,75::", "sky:60,180,75::"]
    last = labelmap_text(["road", "sky"], COLORS[:2], background="last").splitlines()
    assert last[1:] == ["road:230,25,75::", "sky:60,180,75::", "background:0,0,0::"]
    with pytest.raises(ValueError, match="'first', 'last' or None"):
        labelmap_text(["road"], COLORS[:1], background="middle")


def test_labelmap_gives_black_a_name_no_class_has() -> None:
    # a class CVAT reads as background keeps its own colour, so black is "unlabelled"
    lines = labelmap_text(["road", "Background"], COLORS[:2], background="last").splitlines()
    assert lines[1:] == ["road:230,25,75::", "Background:60,180,75::", "unlabelled:0,0,0::"]
    lines = labelmap_text(["unlabelled", "background"], COLORS[:2], background="first").splitlines()
    assert lines[1] == "(unlabelled):0,0,0::"
    # a black class declares black already: two labels of one colour would be ambiguous
    lines = labelmap_text(["road", "background"], [COLORS[0], (0, 0, 0)], background="last")
    assert lines.splitlines()[1:] == ["road:230,25,75::", "background:0,0,0::"]


@pytest.mark.parametrize("names", [["road", "sky", "car"], ["road", "background", "car"]])
def test_palette_masks_read_alike_by_colour_and_by_index(tmp_path: Path, names: list[str]) -> None:
    """With the run folder's labelmap.txt, colour readers and index readers agree."""
    mask = np.random.default_rng(0).integers(0, 3, (37, 53), dtype=np.uint8)
    mask[:5] = UNLABELLED
    save_palette_png(mask, palette_bytes(COLORS), tmp_path / "m.png")
    text = labelmap_text(names, COLORS, background="last")
    lines = [line.split(":") for line in text.splitlines()[1:]]
    by_index = [name for name, *_ in lines]  # pixel value i -> line i
    by_colour = {tuple(int(v) for v in color.split(",")): name for name, color, *_ in lines}
    img = Image.open(tmp_path / "m.png")
    index = np.asarray(img)
    rgb = np.asarray(img.convert("RGB"))
    for value in range(3):
        at = index == value
        assert by_index[value] == names[value]
        assert {by_colour[tuple(int(v) for v in c)] for c in rgb[at]} == {names[value]}
    black = by_colour[(0, 0, 0)]  # every colour is declared, unlabelled pixels' black too
    assert {tuple(c) for c in rgb[index == UNLABELLED]} == {(0, 0, 0)}
    assert black == ("unlabelled" if "background" in names else "background")
    assert by_index[len(names)] == black
    palette = np.asarray(img.getpalette()).reshape(-1, 3)
    assert tuple(palette[len(names)]) == tuple(palette[UNLABELLED]) == (0, 0, 0)  # line N: black


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


@pytest.mark.parametrize(("alpha", "tolerance"), [(0.5, 0), (0.3, 1), (0.8, 1)])
def test_device_renderer_draws_what_opencv_draws(alpha: float, tolerance: int) -> None:
    from ovseg_cli.video.rendering import DeviceOverlayRenderer, overlay_renderer

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (180, 320), dtype=np.uint8)
    mask[40:60, 100:200] = UNLABELLED
    names = ["road", "sky", "a rather long class name"]
    cpu = OverlayRenderer(names, COLORS, alpha=alpha).render(frame, mask)
    device = DeviceOverlayRenderer(names, COLORS, alpha=alpha, device="cpu")
    out = device.render(frame, mask)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert np.abs(out.astype(int) - cpu).max() <= tolerance
    assert np.array_equal(out[40:60, 100:200], frame[40:60, 100:200])  # unlabelled: untouched
    assert type(overlay_renderer(names, COLORS, alpha, "cpu")) is OverlayRenderer
    # any other device draws there ("meta" stands in for a GPU this machine lacks)
    assert isinstance(overlay_renderer(names, COLORS, alpha, "meta"), DeviceOverlayRenderer)
