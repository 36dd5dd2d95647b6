"""`--overwrite` replaces only what ovseg wrote: never an input, the current folder, home, a
root, or a folder without ovseg's marker (issue 13, "Data loss")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dataset_factory import make_camvid
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli.cli import app
from ovseg_cli.outputs import MARKER

runner = CliRunner()


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256: byte-identical before and after."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(*args: str | Path):
    return runner.invoke(app, list(map(str, args)))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of inputs: a video, a classes file and a config, as users keep them."""
    folder = tmp_path / "project"
    folder.mkdir()
    make_video(folder / "clip.mp4", frames=6, size=(64, 48))
    (folder / "classes.txt").write_text("road\nsky: #87ceeb\n")
    (folder / "settings.yaml").write_text("masks: true\n")
    return folder


def test_segment_refuses_a_folder_holding_its_inputs(
    inputs: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _digests(inputs)
    video = inputs / "clip.mp4"
    common = ["--classes-file", inputs / "classes.txt", "--config", inputs / "settings.yaml"]
    cases = [
        ([video, *common, "--out", inputs, "--overwrite"], "holds an input of this run"),
        ([video, "-c", "a,b", "--out", inputs, "--overwrite"], "holds an input of this run"),
        # the classes file and the config are inputs too, even with another video
        ([make_video(tmp_path / "other.mp4"), *common, "--out", inputs, "--overwrite"],
         "holds an input of this run"),
        ([video, "-c", "a,b", "--out", video, "--overwrite"], "is an input of this run"),
    ]  # fmt: skip
    for args, message in cases:
        res = _run("segment", *args, *_tiny(tiny_weights), "-q")
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    monkeypatch.chdir(inputs)  # `cd p && ovseg segment clip.mp4 --out "$UNSET" --overwrite`
    for out in ("", ".", str(inputs), str(tmp_path)):
        res = _run("segment", "clip.mp4", "-c", "a,b", "--out", out, "--overwrite", "-q")
        assert res.exit_code == 2, (out, res.output)
        assert ("empty" if out == "" else "current folder") in res.output, res.output
    assert _digests(inputs) == before
    assert sorted(p.name for p in inputs.iterdir()) == ["classes.txt", "clip.mp4", "settings.yaml"]


def test_overwrite_replaces_only_an_ovseg_output_of_the_same_kind(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = make_video(tmp_path / "v.mp4", frames=4)
    seg = ["segment", video, "-c", "a,b", "--no-overlay", "--masks", *_tiny(tiny_weights), "-q"]
    out = tmp_path / "out"
    assert _run(*seg, "--out", out).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "segment" and "committing" not in marker
    (out / "notes.txt").write_text("mine")  # a user's file inside an ovseg output goes with it
    assert _run(*seg, "--out", out, "--overwrite").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / "meta.json").exists()

    mine = tmp_path / "mine"  # a folder ovseg did not write
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    res = _run(*seg, "--out", mine, "--overwrite")
    assert res.exit_code == 2 and "was not written by ovseg" in res.output, res.output
    assert (mine / "thesis.tex").read_text() == "years of work"

    other = tmp_path / "other_kind"  # an ovseg output of another command
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"ovseg": "0.1.0", "kind": "prep"}))
    res = _run(*seg, "--out", other, "--overwrite")
    assert res.exit_code == 2 and "ovseg prep output, not a segment output" in res.output

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for target, message in ((home, "your home"), (Path("/"), "a root")):
        res = _run(*seg, "--out", target, "--overwrite")
        assert res.exit_code == 2 and message in res.output, res.output
    link = tmp_path / "link"
    link.symlink_to(out)
    res = _run(*seg, "--out", link, "--overwrite")
    assert res.exit_code == 2 and "symbolic link" in res.output
    assert (out / MARKER).exists()


def test_prep_and_eval_refuse_the_dataset_as_output(tmp_path: Path, tiny_weights: Path) -> None:
    src = make_camvid(tmp_path / "ds" / "src")
    before = _digests(tmp_path / "ds")
    for out in (src, tmp_path / "ds"):  # `ovseg prep camvid ds/src --out ds/src --overwrite`
        res = _run("prep", "camvid", src, "--out", out, "--overwrite", "-q")
        assert res.exit_code == 2 and "an input of this run" in res.output, res.output
    assert _digests(tmp_path / "ds") == before

    prepared = tmp_path / "prepared"
    assert _run("prep", "camvid", src, "--out", prepared, "-q").exit_code == 0
    assert json.loads((prepared / MARKER).read_text())["kind"] == "prep"
    before = _digests(prepared)
    ev = ["eval", "--data", prepared, "--split", "all", *_tiny(tiny_weights), "-q"]
    for out in (prepared, tmp_path):  # `ovseg eval --data prepared --out prepared --overwrite`
        res = _run(*ev, "--out", out, "--overwrite")
        assert res.exit_code == 2 and "an input of this run" in res.output, res.output
    # inside the prepared images' source: a later prep of that folder would read the report
    # as data (a folder dataset takes every subfolder for a video), so it is refused too
    res = _run(*ev, "--out", src / "report", "--overwrite")
    assert res.exit_code == 2 and "lies inside an input folder" in res.output, res.output
    res = _run(*ev, "--out", prepared / "report")  # inside the prepared dataset: the same
    assert res.exit_code == 2 and "lies inside an input folder" in res.output, res.output
    res = _run("prep", "camvid", src, "--out", src / "prepared", "-q")
    assert res.exit_code == 2 and "lies inside an input folder" in res.output, res.output
    res = _run("train", "--data", prepared, "--out", prepared / "run", *_tiny(tiny_weights), "-q")
    assert res.exit_code == 2 and "lies inside an input folder" in res.output, res.output
    res = _run(*ev, "--out", tmp_path / "ds", "--overwrite")  # one holding it is not
    assert res.exit_code == 2 and "holds an input" in res.output
    assert _digests(prepared) == before

    res = _run("prep", "camvid", src, "--out", prepared, "--overwrite", "-q")
    assert res.exit_code == 0, res.output  # a prepared dataset of ovseg's may be redone


def test_failed_run_leaves_no_parent_folders(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=4)
    out = tmp_path / "deep" / "er" / "out"
    res = _run("segment", video, "-c", "a,b", "--out", out, *_tiny(tiny_weights),
               "--checkpoint", tmp_path / "missing.safetensors", "-q")  # fmt: skip
    assert res.exit_code == 2 and "checkpoint file not found" in res.output
    assert not (tmp_path / "deep").exists()
