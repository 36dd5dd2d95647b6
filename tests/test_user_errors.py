"""Plain user errors get one line and exit 2, and leave nothing behind (issue 13: unbounded
memory, tracebacks, silent truncation, training run control, misleading messages)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error
from dataset_factory import make_camvid
from typer.testing import CliRunner
from video_factory import make_video, truncate

from ovseg_cli.cli import app

runner = CliRunner()
TRAIN = """\
model: {clip: ovseg-tiny, pretrained: none, dim: 16, pool_sizes: [1, 2, 4], regions: 4,
        text_heads: 2, cost_dim: 8, guidance_dim: 8, size: 64}
data: {crop: [64, 64], scale: [1.0, 1.0], flip: false, jitter: 0.0, batch: 2, workers: 0}
optim: {lr: 2.0e-3, warmup_steps: 1, steps: 2, precision: fp32}
run: {log_every: 1, ckpt_every: 1, val_every: 0}
"""


def _run(*args: str | Path):
    return runner.invoke(app, list(map(str, args)))


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    res = _run("prep", "camvid", make_camvid(root / "src"), "--out", root / "prepared", "-q")
    assert res.exit_code == 0, res.output
    return root / "prepared"


def test_sizes_that_scale_memory_are_refused_before_any_work(
    tmp_path: Path, tiny_weights: Path, prepared: Path
) -> None:
    video = make_video(tmp_path / "base.mp4", frames=4, size=(64, 48))
    seg = ["segment", video, "-c", "a,b", *_tiny(tiny_weights), "-q"]
    flow = tmp_path / "flow.yaml"
    flow.write_text("flow_size: 50000\nkeyframe_interval: 2\n")
    cases = [
        (["--size", "100000"], "size must be between 16 and 4096 pixels"),
        (["--window", "99999"], "window must be between 16 and 4096"),
        (["--batch", "100000"], "batch must be between 1 and 256"),
        (["--config", flow], "flow_size must be between"),
        (["--keyframe-interval", "100000", "--bidirectional"], "keyframe_interval must be"),
        (["--temporal-history", "100000"], "temporal_history must be between 1 and 64"),
        (["--size", "4000"], "would need about"),  # allowed, but not in this machine's memory
    ]
    for extra, message in cases:
        res = _run(*seg, "--out", tmp_path / "out", *extra)
        assert message in one_line_error(res), (extra, res.output)
        assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    flow.unlink()
    ev = ["eval", "--data", prepared, "--split", "all", *_tiny(tiny_weights), "-q"]
    for extra, message in (
        (["--size", "0"], "size must be between 16 and 4096"),  # not "the default"
        (["--size", "4000"], "would need about"),
        (["--vc", "0"], "each vc window must be between 2 and 256"),
    ):
        res = _run(*ev, "--out", tmp_path / "report", *extra)
        assert message in one_line_error(res), (extra, res.output)
        assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []


def test_missing_images_of_an_index(tmp_path: Path, tiny_weights: Path) -> None:
    res = _run("prep", "camvid", make_camvid(tmp_path / "src"), "--out", tmp_path / "ds", "-q")
    assert res.exit_code == 0
    for p in (tmp_path / "src" / "train").glob("*.png"):
        p.unlink()
    for p in (tmp_path / "src" / "val").glob("*.png"):
        p.unlink()
    (tmp_path / "cfg.yaml").write_text(TRAIN)
    res = _run("train", "--data", tmp_path / "ds", "--out", tmp_path / "run",
               "--config", tmp_path / "cfg.yaml", "-q")  # fmt: skip
    assert "file(s) it lists are missing" in one_line_error(res)
    assert not (tmp_path / "run").exists()
    res = _run("eval", "--data", tmp_path / "ds", "--out", tmp_path / "report", "--split", "all",
               *_tiny(tiny_weights), "-q")  # fmt: skip
    assert "file(s) it lists are missing" in one_line_error(res)
    assert not (tmp_path / "report").exists()


def test_train_run_control(tmp_path: Path, prepared: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TRAIN)
    base = ["train", "--data", prepared, "--config", cfg, "-q"]
    run = tmp_path / "run"
    for steps in ("0", "-5"):
        res = _run(*base, "--out", run, "--max-steps", steps)
        assert f"run.max_steps must be at least 1, not {steps}" in one_line_error(res)
        assert not run.exists()
    res = _run(*base, "--out", run, "--set", "optim.lr=nan")
    assert "optim.lr must be a finite number" in one_line_error(res)
    res = _run(*base, "--out", run, "--set", "data.workers=-1")
    assert "data.workers must be >= 0, not -1" in one_line_error(res)
    assert not run.exists()

    run.mkdir()  # what a killed run leaves: files, no checkpoint
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    res = _run(*base, "--out", run)
    assert "already holds files; pass --resume" in one_line_error(res)
    res = _run(*base, "--out", run, "--overwrite")
    assert "was not written by ovseg" in one_line_error(res)  # not ovseg's: refused
    (run / "metrics.jsonl").unlink()
    assert _run(*base, "--out", run).exit_code == 0  # an empty folder is fine
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    res = _run(*base, "--out", run, "--overwrite")  # an ovseg run folder may be replaced
    assert res.exit_code == 0, res.output
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # a fresh log, not appended to the old one
    res = _run(*base, "--out", prepared, "--overwrite")
    assert "an input of this run" in one_line_error(res)


def test_disk_full_is_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_weights: Path, disk_full_masks: None
) -> None:
    video = make_video(tmp_path / "v.mp4", frames=4)
    res = _run("segment", video, "-c", "a,b", "--masks", "--out", tmp_path / "out",
               *_tiny(tiny_weights), "-q")  # fmt: skip
    line = one_line_error(res, code=1)
    assert "disk full writing" in line and "000000.png" in line
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("container", "faststart", "kept", "name"),
    [(None, True, 0.9, "cut.mp4"), ("matroska", False, 0.5, "cut.mkv")],
)
def test_truncated_video_is_read_to_its_real_end_with_a_warning(
    tmp_path: Path,
    tiny_weights: Path,
    caplog: pytest.LogCaptureFixture,
    container,
    faststart,
    kept,
    name,
) -> None:
    caplog.set_level(logging.WARNING, logger="ovseg")  # the CLI shows the library's warnings
    video = make_video(tmp_path / name, frames=200, size=(32, 24), container_format=container,
                       faststart=faststart)  # fmt: skip
    truncate(video, kept)
    out = tmp_path / "out"
    res = _run("segment", video, "-c", "a,b", "--no-overlay", "--export", "stats", "--out", out,
               "--no-temporal", *_tiny(tiny_weights))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "of the 200 frames its container announces (truncated file?)" in res.output
    meta = json.loads((out / "meta.json").read_text())["output"]
    assert meta["frames_expected"] == 200 and meta["truncated"] is True
    assert 0.4 * 200 < meta["frames"] < 200


def test_messages_say_what_is_wrong(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=3)
    seg = ["segment", video, "--out", tmp_path / "out", *_tiny(tiny_weights), "-q"]
    res = _run(*seg, "--classes-file", tmp_path)
    assert "is a folder, not a classes file" in one_line_error(res)
    res = _run(*seg, "-c", "e: #ff0000,a:b", "--masks", "--no-overlay")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    names = [c["name"] for c in meta["classes"]]
    assert names == ["e", "a"] and meta["classes"][0]["color"] == [255, 0, 0]
    assert meta["classes"][1]["prompts"] == ["b"]
    labelmap = (tmp_path / "out" / "labelmap.txt").read_text().splitlines()[1:]
    assert [line.split(":")[0] for line in labelmap] == names  # the same names as meta.json


def test_classes_with_a_colon_are_read_like_a_classes_file() -> None:
    from ovseg_cli.classes import ClassSpec, parse_classes, resolve_classes
    from ovseg_cli.errors import OvsegError

    assert parse_classes("person: pedestrian, sky: #87ceeb") == [
        ClassSpec("person", ("pedestrian",)),
        ClassSpec("sky", (), (135, 206, 235)),
    ]
    with pytest.raises(OvsegError, match="contains ':'"):
        resolve_classes([ClassSpec("a:b")], None)  # CVAT's labelmap could not hold it


def test_pickle_refusal_is_a_whole_sentence_without_warnings(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"echo pwned; touch {marker}",))

    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"w": Payload()}, protocol=4))
    video = make_video(tmp_path / "v.mp4", frames=2)
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "segment", str(video), "-c", "a,b", "--clip",
         "ovseg-tiny", "--pretrained", str(evil), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "pwned" not in proc.stdout + proc.stderr and not marker.exists()
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert lines[0].endswith("convert it to .safetensors"), lines[0]
    assert "Warning" not in proc.stderr
