"""Stop signals clean up in every command, and a killed run's leftovers go with the next run
(issue 13, "Left behind")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dataset_factory import make_camvid, make_folder
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli.cli import app
from ovseg_cli.outputs import MARKER, writer_record

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
STOPS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ovseg_cli", *map(str, args)]


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def _wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (tens of seconds with the tiny model) to be stopped at any point."""
    return make_video(tmp_path_factory.mktemp("long") / "long.mp4", frames=400, size=(160, 120))


def _segment(video: Path, out: Path, weights: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _cli("segment", video, "-c", "road,sky", "--masks", "--out", out,
             "--clip", "ovseg-tiny", "--pretrained", weights),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(("signum", "code"), STOPS)
def test_segment_stopped_as_soon_as_its_folder_exists(
    tmp_path: Path, long_video: Path, tiny_weights: Path, signum: int, code: int
) -> None:
    """The first seconds (model loading) too: the cleanup is in place once the folder is."""
    out = tmp_path / "out"
    proc = _segment(long_video, out, tiny_weights)
    _wait_for(lambda: _partials(out) or proc.poll() is not None)
    proc.send_signal(signum)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, text
    assert "partial output removed" in text
    assert not _partials(out) and not out.exists()


def test_segment_stopped_mid_video(tmp_path: Path, long_video: Path, tiny_weights: Path) -> None:
    out = tmp_path / "out"
    proc = _segment(long_video, out, tiny_weights)
    _wait_for(lambda: any(len(list((p / "masks").glob("*.png"))) > 3 for p in _partials(out)))
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, text
    assert not _partials(out) and not out.exists()


def test_sigkill_leftovers_are_removed_by_the_next_run(
    tmp_path: Path, long_video: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    proc = _segment(long_video, out, tiny_weights)
    _wait_for(lambda: any(len(list((p / "masks").glob("*.png"))) > 3 for p in _partials(out)))
    proc.kill()  # SIGKILL: no cleanup can run
    proc.wait(timeout=30)
    killed = _partials(out)
    assert len(killed) == 1

    alive = tmp_path / f".{out.name}.partial-running"  # another run still writing
    alive.mkdir()
    (alive / MARKER).write_text(json.dumps({"ovseg": "0", "kind": "segment",
                                            "writer": writer_record()}))  # fmt: skip
    foreign = tmp_path / f".{out.name}.partial-notours"  # no marker: not ovseg's to delete
    foreign.mkdir()

    short = make_video(tmp_path / "short.mp4", frames=3, size=(64, 48))
    res = CliRunner().invoke(
        app, ["segment", str(short), "-c", "road,sky", "--out", str(out), "--clip", "ovseg-tiny",
              "--pretrained", str(tiny_weights), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not killed[0].exists()
    assert alive.exists() and foreign.exists()
    assert json.loads((out / "meta.json").read_text())["output"]["frames"] == 3


SLOW_PREP = """
import sys, time
import ovseg_cli.datasets.prep as prep
process = prep._process
def slow(job):  # each video takes a second: the signal lands mid-run
    time.sleep(1.0)
    return process(job)
prep._process = slow
from ovseg_cli.cli import main
sys.argv[0] = "ovseg"
main()
"""


def test_prep_stopped_mid_run(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "raw", frames=4)
    out = tmp_path / "prepared"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREP, "prep", "folder", str(root), "--out", str(out),
         "--workers", "1"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(lambda: _partials(out) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, text
    assert "partial output removed" in text
    assert not _partials(out) and not out.exists()


def test_eval_stopped(tmp_path: Path, tiny_weights: Path) -> None:
    prepared = tmp_path / "prepared"
    res = CliRunner().invoke(
        app, ["prep", "camvid", str(make_camvid(tmp_path / "cv")), "--out", str(prepared), "-q"]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "report"
    proc = subprocess.Popen(
        _cli("eval", "--data", prepared, "--split", "all", "--out", out, "--clip", "ovseg-tiny",
             "--pretrained", tiny_weights),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(lambda: _partials(out) or proc.poll() is not None)
    proc.send_signal(signal.SIGHUP)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 129, text
    assert not _partials(out) and not out.exists()
