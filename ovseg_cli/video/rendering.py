"""Pictures of results: colour overlays with a legend, palette PNG masks, CVAT label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovseg_cli.classes import RGB, UNLABELLED


def palette_bytes(colors: Sequence[RGB]) -> bytes:
    """A 256-entry PNG palette: class i has colors[i]; unused entries and 255 are black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return pal.tobytes()


def save_palette_png(mask: np.ndarray, palette: bytes, path: str | Path) -> None:
    """Save an (H, W) uint8 class-index mask as a palette PNG (pixel value = class index)."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    img.putpalette(palette)  # turns the L image into P without touching the indices
    img.save(path, format="PNG", compress_level=1)  # masks compress well even at level 1


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def render_legend(
    names: Sequence[str], colors: Sequence[RGB], frame_height: int, frame_width: int
) -> np.ndarray:
    """An RGBA legend (swatch + name per class), sized for the frame, in columns if needed."""
    fs = max(10, min(28, frame_height // 36))
    font = _font(fs)
    pad, gap = max(3, fs // 3), max(2, fs // 4)
    sw = fs  # swatch side
    row_h = fs + gap
    max_rows = max(1, (frame_height - 2 * pad) // row_h)
    cols = [list(range(i, min(i + max_rows, len(names)))) for i in range(0, len(names), max_rows)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [
        max(int(probe.textlength(names[i], font=font)) for i in col) + sw + 2 * gap for col in cols
    ]
    width = min(frame_width, sum(widths) + pad * 2)
    height = min(frame_height, min(len(names), max_rows) * row_h + 2 * pad - gap)
    img = Image.new("RGBA", (max(1, width), max(1, height)), (0, 0, 0, 150))
    draw = ImageDraw.Draw(img)
    x = pad
    for col, w in zip(cols, widths, strict=True):
        for r, i in enumerate(col):
            y = pad + r * row_h
            draw.rectangle([x, y, x + sw - 1, y + sw - 1], fill=(*colors[i], 255))
            draw.text(
                (x + sw + gap, y + sw / 2),
                names[i],
                font=font,
                fill=(255, 255, 255, 255),
                anchor="lm",
            )
        x += w
    return np.asarray(img)


class OverlayRenderer:
    """Blends class colours over frames (unlabelled pixels untouched) and stamps a legend."""

    def __init__(
        self, names: Sequence[str], colors: Sequence[RGB], alpha: float = 0.5, legend: bool = True
    ) -> None:
        self.names = list(names)
        self.colors = list(colors)
        # (256, 1, 3): cv2.LUT maps each channel of a 3-channel mask through its own table
        self.lut = np.zeros((256, 1, 3), dtype=np.uint8)
        self.lut[: len(colors), 0] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        self.alpha = alpha
        self.legend = legend
        self._legend_for: tuple[int, int] | None = None
        self._legend_rgb: np.ndarray | None = None
        self._legend_a: np.ndarray | None = None

    def _legend(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._legend_for != (h, w):
            rgba = render_legend(self.names, self.colors, h, w)
            self._legend_rgb = rgba[..., :3].astype(np.uint16)
            self._legend_a = rgba[..., 3:].astype(np.uint16) + 1  # 1..256
            self._legend_for = (h, w)
        return self._legend_rgb, self._legend_a  # type: ignore[return-value]

    def render(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The frame with its mask blended in; a new (H, W, 3) uint8 array."""
        import cv2

        # OpenCV's LUT and weighted sum: ~4x faster than numpy indexing and uint16 blending
        # at 720p, which matters once keyframes leave most frames without a model run
        color = cv2.LUT(cv2.merge([mask, mask, mask]), self.lut)
        out = cv2.addWeighted(frame, 1.0 - self.alpha, color, self.alpha, 0.0)
        unl = mask == UNLABELLED
        if unl.any():
            np.copyto(out, frame, where=unl[..., None])
        if self.legend and self.names:
            rgb, a = self._legend(*frame.shape[:2])
            lh, lw = rgb.shape[:2]
            region = out[:lh, :lw].astype(np.uint16)
            region *= 256 - a
            region += rgb * a
            region >>= 8
            out[:lh, :lw] = region
        return out


class DeviceOverlayRenderer(OverlayRenderer):
    """``OverlayRenderer`` computed on a torch device (the model's GPU): the frame and its
    mask go up, the colour lookup, blend and legend run there, and only the uint8 overlay
    comes back. At the default alpha 0.5 it equals the OpenCV blend exactly; at other
    alphas a value can differ by 1 (float rounding of the weighted sum)."""

    def __init__(
        self,
        names: Sequence[str],
        colors: Sequence[RGB],
        alpha: float = 0.5,
        legend: bool = True,
        *,
        device: Any = "cpu",
    ) -> None:
        import torch

        super().__init__(names, colors, alpha, legend)
        self.device = torch.device(device)
        self._lut = torch.from_numpy(self.lut[:, 0].copy()).to(self.device)
        self._legend_on: tuple[tuple[int, int], Any, Any] | None = None

    def _legend_tensors(self, h: int, w: int) -> tuple[Any, Any]:
        import torch

        if self._legend_on is None or self._legend_on[0] != (h, w):
            rgb, a = self._legend(h, w)
            on = [torch.from_numpy(x.astype(np.int32)).to(self.device) for x in (rgb, a)]
            self._legend_on = ((h, w), on[0], on[1])
        return self._legend_on[1], self._legend_on[2]

    def render(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The frame with its mask blended in, computed on the device; (H, W, 3) uint8."""
        import torch

        f = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, non_blocking=True)
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(self.device, non_blocking=True)
        color = self._lut[m.long()]
        # cv2.addWeighted's float32 weighted sum, rounded half to even
        out = (f.float() * (1.0 - self.alpha) + color.float() * self.alpha).round_().clamp_(0, 255)
        out = torch.where((m == UNLABELLED)[..., None], f, out.to(torch.uint8))
        if self.legend and self.names:
            rgb, a = self._legend_tensors(*frame.shape[:2])
            lh, lw = rgb.shape[:2]
            region = out[:lh, :lw].to(torch.int32)
            out[:lh, :lw] = ((region * (256 - a) + rgb * a) >> 8).to(torch.uint8)
        return out.cpu().numpy()


def overlay_renderer(
    names: Sequence[str], colors: Sequence[RGB], alpha: float, device: Any
) -> OverlayRenderer:
    """The renderer for the model's device: OpenCV on the CPU, torch on a GPU."""
    if str(device).startswith("cpu"):
        return OverlayRenderer(names, colors, alpha=alpha)
    return DeviceOverlayRenderer(names, colors, alpha=alpha, device=device)
