"""Tiny fake datasets on disk (VSPW, Cityscapes sequences, CamVid, folder) for the prep tests.

Frames are small PNG/JPG files. A frame's label is a pattern of class blocks that moves with
the frame number, and a frame's colours are `COLORS[class]` of its own label, so a test
can check that augmentation keeps labels aligned with frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (40, 30)  # width, height


def colors(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: distinct, far-apart colours (class i -> colors[i])."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (n, 3), dtype=np.uint8)


COLORS = colors()


def pattern(frame: int, values: list[int], size: tuple[int, int] = SIZE) -> np.ndarray:
    """(H, W) uint8 label: vertical bands of ``values``, shifted by one pixel per frame, plus
    a block of values[0] in the top-left corner (so the pattern has no mirror symmetry)."""
    w, h = size
    band = max(1, w // len(values))
    cols = ((np.arange(w) + frame) // band) % len(values)
    lab = np.asarray(values, np.uint8)[cols][None, :].repeat(h, axis=0)
    lab[: h // 3, : w // 4] = values[0]
    return lab


def save_frame(path: Path, label: np.ndarray, *, fmt: str | None = None) -> Path:
    """An RGB frame whose pixel colours are COLORS[label]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(COLORS[label]).save(path, format=fmt, quality=95)
    return path


def save_label(path: Path, label: np.ndarray, mode: str = "L") -> Path:
    """An index PNG (mode L or P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(label, np.uint8))
    if mode == "P":
        img.putpalette(COLORS.tobytes())
    img.save(path)
    return path


def vspw_names(n: int = 124) -> list[str]:
    """Class names for a fake VSPW label list (the first few as in VSPW)."""
    real = ["wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide"]
    return (real + [f"class_{i}" for i in range(len(real), n)])[:n]


def make_vspw(
    root: Path,
    videos: dict[str, list[str]] | None = None,
    frames: int = 6,
    classes: int = 124,
    values: list[int] | None = None,
) -> Path:
    """VSPW_480p layout: label list with string ids (as released), data/<video>/{origin,mask}.

    Raw mask values: 0 (others), 1..classes, 255; test videos have no masks.
    """
    videos = videos or {"train": ["v_a", "v_b"], "val": ["v_c"], "test": ["v_d"]}
    values = values or [0, 1, 81, 124, 255]
    root.mkdir(parents=True, exist_ok=True)
    ids = {"others": "0", **{n: str(i + 1) for i, n in enumerate(vspw_names(classes))}}
    (root / "label_num_dic_final.json").write_text(json.dumps(ids))
    for split, names in videos.items():
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in names:
            for f in range(frames):
                lab = pattern(f, values)
                save_frame(root / "data" / name / "origin" / f"{f + 1:08d}.jpg", lab, fmt="JPEG")
                if split != "test":
                    save_label(root / "data" / name / "mask" / f"{f + 1:08d}.png", lab, "P")
    return root


def make_cityscapes(root: Path, snippet: int = 30, labelled_at: int = 19) -> Path:
    """leftImg8bit_sequence + gtFine: train has two snippets of aachen (sequences 0 and 1),
    val one snippet of frankfurt starting at frame 275 (so labelled at 294), test one with a
    placeholder label. Labels use labelIds 7 (road), 26 (car), 0 (unlabeled), 33 (bicycle)."""
    values = [7, 26, 0, 33]
    plan = [("train", "aachen", 0, 0), ("train", "aachen", 1, 0), ("val", "frankfurt", 0, 275),
            ("test", "berlin", 0, 100)]  # fmt: skip
    for split, city, seq, start in plan:
        for k in range(snippet):
            n = start + k
            stem = f"{city}_{seq:06d}_{n:06d}"
            lab = pattern(k, values)
            save_frame(
                root / "leftImg8bit_sequence" / split / city / f"{stem}_leftImg8bit.png", lab
            )
            if k == labelled_at:
                gt = root / "gtFine" / split / city
                save_label(gt / f"{stem}_gtFine_labelIds.png", lab if split != "test" else lab * 0)
                save_label(gt / f"{stem}_gtFine_color.png", lab)  # other gtFine files are ignored
    return root


def make_camvid(root: Path) -> Path:
    """SegNet CamVid: train with sequences 0001TP (numbers 6690..) and 0006R0 ('f' prefix,
    written out of order), val with 0016E5 (every 2nd frame). Labels 0..10 and 11 (void)."""
    plan = {
        "train": [f"0001TP_{n:06d}" for n in (6690, 6720, 6750, 6780)]
        + [f"0006R0_f{n:05d}" for n in (990, 930, 960)],
        "val": [f"0016E5_{n:05d}" for n in range(7959, 7959 + 2 * 8, 2)],
    }
    for split, stems in plan.items():
        for k, stem in enumerate(stems):
            lab = pattern(k, [3, 8, 11, 0, 10])
            save_frame(root / split / f"{stem}.png", lab)
            save_label(root / f"{split}annot" / f"{stem}.png", lab)
    return root


def make_folder(root: Path, frames: int = 12) -> Path:
    """classes.txt with 4 classes; videos 'walk' (masks on every 3rd frame) and 'ride' (all
    masked, listed in val.txt); frames are PNGs named frame1..frameN (natural order)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("road\nperson: person, pedestrian\nsky: #87ceeb\ncar\n")
    (root / "val.txt").write_text("ride\n")
    for name, every in (("walk", 3), ("ride", 1)):
        for f in range(frames):
            lab = pattern(f, [0, 1, 2, 3, 255])
            save_frame(root / name / "frames" / f"frame{f + 1}.png", lab)
            if f % every == 0:
                save_label(root / name / "masks" / f"frame{f + 1}.png", lab)
    return root


def make_shapes(root: Path, size: int = 128, frames: int = 12, videos: int = 2) -> Path:
    """Folder layout of moving shapes whose class is their colour: a grey background, a red
    square drifting right, a blue disc drifting left (every frame labelled)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nred square\nblue disc\n")
    colours = np.array([[90, 90, 90], [220, 30, 30], [30, 60, 220]], np.uint8)
    s = size / 128  # positions below are for 128 px
    yy, xx = np.mgrid[0:size, 0:size]
    for v in range(videos):
        for f in range(frames):
            lab = np.zeros((size, size), np.uint8)
            x = int(((6 * f + 30 * v) % 70) * s)
            lab[int(12 * s) : int(60 * s), x : x + int(48 * s)] = 1
            cx = (100 - (5 * f + 20 * v) % 70) * s
            lab[(yy - 92 * s) ** 2 + (xx - cx) ** 2 < (26 * s) ** 2] = 2
            d = root / f"video{v}"
            save_frame_rgb(d / "frames" / f"{f:03d}.png", colours[lab])
            save_label(d / "masks" / f"{f:03d}.png", lab)
    return root


def save_frame_rgb(path: Path, rgb: np.ndarray) -> Path:
    """An RGB frame as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
