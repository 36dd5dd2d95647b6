"""`ovseg eval` end to end: each split on a small prepared dataset, a checkpoint, real CamVid."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file
from dataset_factory import make_folder, make_shapes
from typer.testing import CliRunner

from ovseg_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ovseg_cli.datasets import prepare

    base = tmp_path_factory.mktemp("evaldata")
    root = make_folder(base / "raw", frames=12)
    return prepare("folder", root, base / "prepared", seen="0,1").out_dir


def _eval(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, ["eval", *map(str, args)])
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("split", "classes"), [("unseen", [2, 3]), ("seen", [0, 1]), ("all", [0, 1, 2, 3])]
)
def test_each_split(
    tmp_path: Path, prepared: Path, tiny_weights: Path, split: str, classes: list[int]
) -> None:
    out = tmp_path / "report"
    code, output = _eval(
        "--data", prepared, "--split", split, "--clip", "ovseg-tiny", "--pretrained", tiny_weights,
        "-o", out, "--vc", "2,4",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    for key in (
        "mIoU",
        "fwIoU",
        "mAcc",
        "pAcc",
        "per_class",
        "vc",
        "class_split",
        "model",
        "config",
    ):
        assert key in report
    assert report["evaluated_classes"] == classes
    assert [c["name"] for c in report["per_class"]] == [
        ["road", "person", "sky", "car"][c] for c in classes
    ]
    assert report["class_split"] == {"seen": [0, 1], "unseen": [2, 3]}
    assert report["frames"] == 12 and report["labelled_frames"] == 12  # the 'ride' val video
    assert set(report["vc"]) == {"VC2", "VC4"} and 0 <= report["vc"]["VC4"] <= 1
    assert 0 <= report["pAcc"] <= 1 and report["fps"] > 0
    assert ("hmean" in report) == (split == "all")
    if split == "all":
        s, u = report["seen"], report["unseen"]
        if s is not None and u is not None and s + u > 0:
            assert report["hmean"] == pytest.approx(2 * s * u / (s + u))
    assert (out / "per_class_iou.png").stat().st_size > 1000
    assert len(list((out / "examples").glob("*.png"))) == 4
    assert "mIoU" in output and "per class" in output


def test_eval_with_a_checkpoint_and_prompts(
    tmp_path: Path, prepared: Path, tiny_checkpoint: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sky: sky, clear sky\ncar: car, automobile\n")
    out = tmp_path / "report"
    code, output = _eval(
        "--data", prepared, "--split", "unseen", "--checkpoint", tiny_checkpoint, "-o", out,
        "--classes-file", prompts, "--examples", "0", "-q",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["kind"] == "ov2vss" and report["checkpoint"] == str(tiny_checkpoint)
    assert not (out / "examples").exists()


def test_eval_errors(tmp_path: Path, prepared: Path, tiny_weights: Path) -> None:
    tiny = ["--clip", "ovseg-tiny", "--pretrained", str(tiny_weights)]
    bad = tmp_path / "bad.txt"
    bad.write_text("skyy: sky\n")
    cases = [
        (["--data", tmp_path / "nothing"], "no prepared dataset"),
        (["--data", prepared, "--classes-file", bad], "did you mean 'sky'"),
        (["--data", prepared, "--split", "unsen"], "did you mean 'unseen'"),
        (["--data", prepared, "--data-split", "test"], "no labelled videos in the test split"),
    ]
    for args, message in cases:
        code, output = _eval(*args, *tiny, "-o", tmp_path / "o")
        assert code == 2 and message in output, (args, output)
        assert not (tmp_path / "o").exists()


def test_torchrun_two_processes_report_the_numbers_of_one(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """Each rank scores its share of the videos; the summed counts give one process's report."""
    from ovseg_cli.datasets import prepare

    data = prepare("folder", make_shapes(tmp_path / "raw", size=64, videos=3), tmp_path / "p")
    args = [
        "eval", "--data", data.out_dir, "--data-split", "train", "--split", "all", "--vc", "2,4",
        "--masks", "--clip", "ovseg-tiny", "--pretrained", tiny_weights, "-q",
    ]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    code, output = _eval(*args[1:], "-o", one)
    assert code == 0, output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "ovseg_cli",
        *map(str, args), "-o", str(two),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = json.loads((one / "report.json").read_text())
    b = json.loads((two / "report.json").read_text())
    exact = ["mIoU", "fwIoU", "mAcc", "pAcc", "per_class", "by_frame_kind", "vc_windows",
             "seen", "unseen", "hmean", "videos", "frames", "labelled_frames", "stream"]  # fmt: skip
    assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
    assert a["videos"] == 3 and a["labelled_frames"] == 36 and a["vc_windows"]["VC4"] > 0
    # window scores are summed in another order: equal to float rounding
    assert b["vc"] == {k: pytest.approx(v, rel=1e-12) for k, v in a["vc"].items()}
    for folder in ("masks", "examples"):  # every rank wrote its videos into rank 0's folder
        files_a = sorted(p.relative_to(one) for p in (one / folder).rglob("*.png"))
        files_b = sorted(p.relative_to(two) for p in (two / folder).rglob("*.png"))
        assert files_a == files_b and len(files_a) > 0
        assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files_a)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_real_camvid_val(tmp_path: Path, tiny_weights: Path) -> None:
    root = shared_file("camvid")
    from ovseg_cli.datasets import prepare

    data = prepare("camvid", root, tmp_path / "camvid").out_dir
    out = tmp_path / "report"
    code, output = _eval(
        "--data", data, "--split", "all", "--clip", "ovseg-tiny", "--pretrained", tiny_weights,
        "-o", out, "-q", "--size", "96",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["labelled_frames"] == 101 and report["videos"] == 1
    assert len(report["per_class"]) == 11
    assert not math.isnan(report["vc"]["VC8"]) and not math.isnan(report["vc"]["VC16"])
    assert {"seen", "unseen", "hmean"} <= set(report)
