"""`ovseg prep` from the command line: summary, --quiet, --overwrite, and every bad input as
one line, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dataset_factory import (
    make_camvid,
    make_cityscapes,
    make_folder,
    make_vspw,
    pattern,
    save_label,
)
from PIL import Image
from typer.testing import CliRunner

from ovseg_cli.cli import app

runner = CliRunner()


def _prep(*args: str | Path):
    return runner.invoke(app, ["prep", *map(str, args)], catch_exceptions=False)


def _no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_summary_table_and_quiet(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    res = _prep("camvid", root, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    for text in ("prep camvid", "labelled frames", "train", "val", "11 (7 seen, 4 unseen)"):
        assert text in res.output
    assert (tmp_path / "out" / "index.json").is_file()
    res = _prep("camvid", root, "-o", tmp_path / "q", "--quiet", "--seen", "none")
    assert res.exit_code == 0 and res.output == ""


def test_overwrite_replaces_a_complete_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", frames=3)
    out = tmp_path / "out"
    assert _prep("folder", root, "-o", out, "-q").exit_code == 0
    res = _prep("folder", root, "-o", out, "-q")
    assert res.exit_code == 2 and "already exists; pass --overwrite" in res.output
    res = _prep("folder", root, "-o", out, "-q", "--overwrite", "--seen", "0,1", "--split", "val")
    assert res.exit_code == 0, res.output
    assert '"seen": [0, 1]' in (out / "index.json").read_text() and _no_partials(tmp_path)


def test_empty_seen_class_warning(tmp_path: Path) -> None:
    root = make_vspw(tmp_path / "v", videos={"train": ["a"]}, frames=1)
    res = _prep("vspw", root, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert (
        "warning:" in res.output and "seen class(es) have no labelled pixels in train" in res.output
    )


def _mismatched_label(root: Path) -> None:
    save_label(root / "trainannot" / "0001TP_006720.png", np.zeros((10, 10), np.uint8))


def _bad_values(root: Path) -> None:
    for name in ("0001TP_006690", "0006R0_f00930"):
        save_label(root / "trainannot" / f"{name}.png", pattern(0, [3, 12, 200, 11]))


def _rgb_label(root: Path) -> None:
    Image.new("RGB", (40, 30)).save(root / "valannot" / "0016E5_07959.png")


def _empty_video(root: Path) -> None:
    (root / "empty" / "frames").mkdir(parents=True)


def _vspw_missing_video(root: Path) -> None:
    (root / "val.txt").write_text("v_c\nghost\n")


def _not_an_image(root: Path) -> None:
    (root / "train" / "0001TP_006690.png").write_text("not a png")


Case = tuple[str, Callable[[Path], Path], Callable[[Path], None] | None, list[str], str]
CASES: list[Case] = [
    ("camvid", lambda p: p / "missing", None, [], "dataset root not found"),
    ("camvid", lambda p: make_vspw(p / "vspw"), None, [],
     "is not a CamVid dataset: expected train/ + trainannot/ (and val/, test/ alike), found data/, label_num_dic_final.json"),
    ("vspw", lambda p: make_camvid(p / "cv"), None, [], "is not a VSPW dataset: expected data/<video>/origin"),
    ("cityscapes", lambda p: make_folder(p / "f"), None, [], "is not a Cityscapes sequence dataset"),
    ("folder", lambda p: make_cityscapes(p / "cs", snippet=2, labelled_at=1), None, [],
     "is not a folder dataset: expected classes.txt"),
    ("camvid", lambda p: make_camvid(p / "cv"), _mismatched_label, [],
     "label size differs from its frame in 1 file(s):"),
    ("camvid", lambda p: make_camvid(p / "cv"), _bad_values, [],
     "label values outside the class list (allowed: 0..10 and 11 (void)) in 2 file(s):"),
    ("camvid", lambda p: make_camvid(p / "cv"), _rgb_label, [], "are not index PNGs"),
    ("camvid", lambda p: make_camvid(p / "cv"), _not_an_image, [], "cannot read 1 file(s)"),
    ("folder", lambda p: make_folder(p / "f", frames=2), _empty_video, [], "empty video empty"),
    ("vspw", lambda p: make_vspw(p / "v", frames=1), _vspw_missing_video, [],
     "video ghost of val.txt has no folder"),
    ("camvid", lambda p: make_camvid(p / "cv"), None, ["--seen", "0-11"], "class index 11 is out of range"),
    ("camvid", lambda p: make_camvid(p / "cv"), None, ["--seen", "Skye"], "did you mean 'Sky'?"),
    ("camvid", lambda p: make_camvid(p / "cv"), None, ["--split-file", "nope.yaml"], "split file not found"),
    ("folder", lambda p: make_folder(p / "f", frames=2), None, ["--split", "dev"], "unknown split 'dev'"),
    ("camvid", lambda p: make_camvid(p / "cv"), None, ["--workers", "0"], "--workers must be at least 1"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[4][:30]}" for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, case: Case) -> None:
    fmt, make, spoil, extra, message = case
    root = make(tmp_path)
    if spoil is not None:
        spoil(root)
    out = tmp_path / "out"
    res = _prep(fmt, root, "-o", out, "-q", *extra)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("error:")
    assert not out.exists() and _no_partials(tmp_path)


def test_bad_values_name_the_files(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    _bad_values(root)
    res = _prep("camvid", root, "-o", tmp_path / "out", "-q")
    text = " ".join(res.output.split())
    assert "0001TP_006690.png (12, 200)" in text and "0006R0_f00930.png (12, 200)" in text


def test_prep_never_imports_torch_and_lists_its_formats() -> None:
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, ovseg_cli.cli.prep; from ovseg_cli.datasets import prepare; "
         "print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "False", probe.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "prep", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    for fmt in ("vspw", "cityscapes", "camvid", "folder"):
        assert fmt in proc.stdout
