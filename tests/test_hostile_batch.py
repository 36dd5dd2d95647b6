"""Batch mode against a hostile user (issue 21, cases 1, 4, 5, 6 and 17): nothing written
outside --out, one-line refusals before any work, unreadable folders skipped."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from conftest import one_line_error
from typer.testing import CliRunner
from video_factory import make_video as _make_video

from ovseg_cli.batch.inputs import expand_inputs
from ovseg_cli.batch.manifest import read_manifest
from ovseg_cli.cli import app

runner = CliRunner()


def make_video(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _make_video(path, frames=3, size=(48, 32), **kwargs)


def _segment(*args: str | Path, weights: Path, overlay: bool = False):
    return runner.invoke(
        app, ["segment", *map(str, args), "-c", "a,b", "--clip", "ovseg-tiny", "--pretrained",
              str(weights), "--masks", *([] if overlay else ["--no-overlay"])],
    )  # fmt: skip


@pytest.fixture
def batch(tmp_path: Path, tiny_weights: Path) -> tuple[Path, Path]:
    """Two clips and a finished batch of them in lab/."""
    clips = tmp_path / "clips"
    make_video(clips / "a.mp4")
    make_video(clips / "b.mp4")
    res = _segment(clips, "--out", tmp_path / "lab", weights=tiny_weights)
    assert res.exit_code == 0, res.output
    return clips, tmp_path / "lab"


def test_case_01_symlinked_manifest_is_refused_and_its_target_untouched(
    tmp_path: Path, batch: tuple[Path, Path], tiny_weights: Path
) -> None:
    clips, lab = batch
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (lab / "manifest.jsonl").unlink()
    (lab / "manifest.jsonl").symlink_to(Path("..") / "victim.txt")
    res = _segment(clips, "--out", lab, weights=tiny_weights)
    assert "manifest.jsonl is a symbolic link" in one_line_error(res)
    assert victim.read_text() == "keep me\n"


def test_case_01_manifest_link_made_after_the_check_is_not_followed(tmp_path: Path) -> None:
    from ovseg_cli.batch import manifest as m
    from ovseg_cli.errors import OvsegError

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "manifest.jsonl"
    link.symlink_to(victim)
    check = m.check_manifest
    m.check_manifest = lambda path: None  # the race: the link appears after the check
    try:
        with pytest.raises(OvsegError, match="symbolic link"):
            m.Manifest(link)
    finally:
        m.check_manifest = check
    assert victim.read_text() == "keep me\n"


def test_case_04_manifest_that_is_a_folder_is_refused_before_loading(
    batch: tuple[Path, Path], tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips, lab = batch
    (lab / "manifest.jsonl").unlink()
    (lab / "manifest.jsonl").mkdir()
    import ovseg_cli.segment.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the manifest was checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    res = _segment(clips, "--out", lab, "--overwrite", weights=tiny_weights)
    assert "manifest.jsonl is not a regular file" in one_line_error(res)


def test_case_05_unreadable_subfolder_is_skipped_with_a_warning(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = tmp_path / "clips"
    make_video(clips / "a.mp4")
    make_video(clips / "locked" / "b.mp4")
    locked = clips / "locked"
    logging.getLogger("ovseg").setLevel(logging.WARNING)  # conftest keeps only errors
    if os.geteuid() == 0:  # root reads a chmod 000 folder: refuse access the way it fails
        real_scandir, real_stat = os.scandir, os.stat

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_scandir(path)

        def stat(path, *args, **kwargs):
            if Path(path).parent == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "stat", stat)
    else:
        locked.chmod(0)
    try:
        res = _segment(clips, "--out", tmp_path / "lab", weights=tiny_weights)
    finally:
        locked.chmod(0o755)
    assert res.exit_code == 0, res.output
    assert f"skipped {locked}" in res.output and "Permission denied" in res.output
    records = read_manifest(tmp_path / "lab" / "manifest.jsonl")
    assert [(r["output"], r["status"]) for r in records] == [("a", "done")]


def test_case_06_rerun_of_a_glob_skips_ovseg_outputs(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "clips" / "a.mp4")
    make_video(tmp_path / "clips" / "sub" / "b.mp4")
    for run in range(2):  # the second run is how a batch resumes: the same command
        res = _segment("clips/**/*.mp4", "--out", "clips/lab", weights=tiny_weights, overlay=True)
        assert res.exit_code == 0, (run, res.output)
    statuses = [(r["output"], r["status"]) for r in read_manifest("clips/lab/manifest.jsonl")]
    assert statuses == [("a", "done"), ("sub/b", "done"), ("a", "skipped"), ("sub/b", "skipped")]
    # the outputs' overlay.mp4 files never become inputs
    assert expand_inputs(["clips/**/*.mp4"]) == [
        tmp_path / "clips" / "a.mp4", tmp_path / "clips" / "sub" / "b.mp4"
    ]  # fmt: skip


def test_case_17_disk_full_in_a_batch_is_recorded_as_disk_full(
    tmp_path: Path, tiny_weights: Path, disk_full_masks: None
) -> None:
    make_video(tmp_path / "clips" / "a.mp4")
    res = _segment(tmp_path / "clips", "--out", tmp_path / "lab", weights=tiny_weights)
    assert res.exit_code == 1, res.output
    (record,) = read_manifest(tmp_path / "lab" / "manifest.jsonl")
    assert record["status"] == "failed"
    assert record["error"].startswith("disk full writing ") and "000000.png" in record["error"]


def test_case_07_unreachable_ray_address_fails_fast_naming_it(
    tmp_path: Path, tiny_weights: Path
) -> None:
    pytest.importorskip("ray")
    import subprocess
    import sys
    import time

    make_video(tmp_path / "clips" / "a.mp4")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "segment", str(tmp_path / "clips"), "-c", "a,b",
         "--out", str(tmp_path / "lab"), "--clip", "ovseg-tiny", "--pretrained", str(tiny_weights),
         "--engine", "ray", "--ray-address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray cluster at "
                                                   "127.0.0.1:1"), proc.stderr  # fmt: skip
    assert time.monotonic() - t0 < 60  # Ray alone retried for minutes
    assert not (tmp_path / "lab").exists()
