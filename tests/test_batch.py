"""`ovseg segment INPUT...` over many videos (issue 17): inputs, naming, the manifest, resume,
failures, stop signals and SIGKILL, and the Python API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from video_factory import make_text_file, truncate
from video_factory import make_video as _make_video

from ovseg_cli.batch.inputs import expand_inputs, is_batch, output_names
from ovseg_cli.batch.manifest import Manifest, latest, read_manifest
from ovseg_cli.cli import app
from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import MARKER, read_marker

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
GOOD = ["a", "b", "sub/c", "sub/d", "sub/deeper/e"]  # output names of the good videos


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in this process, as the subprocesses here (OMP_NUM_THREADS=1): on a
    busy 2-core machine two spinning OpenMP threads make the tiny model ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_video(path: Path, **kwargs) -> Path:
    """A small video, its folders made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _make_video(path, **kwargs)


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


def _segment(*args: str | Path):
    return runner.invoke(app, ["segment", *map(str, args)], catch_exceptions=False)


def _masks(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((folder / "masks").glob("*.png"))]


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


def _runs(manifest: Path) -> list[list[dict]]:
    """The manifest's records grouped by run, in order."""
    runs: dict[str, list[dict]] = {}
    for r in read_manifest(manifest):
        runs.setdefault(r["run"], []).append(r)
    return list(runs.values())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short videos in nested folders, one of them corrupt (a download cut short)."""
    root = tmp_path_factory.mktemp("clips") / "in"
    make_video(root / "a.mp4", frames=8, size=(64, 48))
    make_video(root / "b.mkv", frames=6, size=(80, 48))
    make_video(root / "sub" / "c.mp4", frames=7, size=(64, 48))
    make_video(root / "sub" / "d.mov", frames=5, size=(64, 64))
    make_video(root / "sub" / "deeper" / "e.mp4", frames=9, size=(48, 64))
    truncate(make_video(root / "sub" / "broken.mp4", frames=30, size=(64, 48)), 0.5)
    (root / "notes.txt").write_text("not a video, not taken from a folder\n")
    return root


def test_inputs_folders_globs_lists_and_names(tmp_path: Path, clips: Path) -> None:
    old = tmp_path / "old_ovseg"  # an earlier single run's output: never an input
    make_video(old / "overlay.mp4", frames=2)
    (old / MARKER).write_text('{"ovseg": "0", "kind": "segment"}')
    make_video(tmp_path / ".hidden" / "x.mp4", frames=2)
    listing = tmp_path / "lists" / "videos.txt"
    listing.parent.mkdir()
    listing.write_text(f"# two videos\n../{clips.name}/a.mp4\n\n{clips / 'sub' / 'c.mp4'}\n")

    videos = expand_inputs([str(clips), str(tmp_path)])
    assert [v.relative_to(clips).as_posix() for v in videos] == [
        "a.mp4", "b.mkv", "sub/broken.mp4", "sub/c.mp4", "sub/d.mov", "sub/deeper/e.mp4",
    ]  # fmt: skip
    assert expand_inputs([str(clips / "sub" / "*.mp4"), str(clips / "sub" / "c.mp4")]) == [
        clips / "sub" / "broken.mp4",
        clips / "sub" / "c.mp4",
    ]
    (tmp_path / clips.name).symlink_to(clips)  # an @list's paths: from the list's folder
    assert expand_inputs([f"@{listing}"]) == [
        tmp_path / clips.name / "a.mp4",
        clips / "sub" / "c.mp4",
    ]
    assert [n.as_posix() for n in output_names(videos)] == [
        "a", "b", "sub/broken", "sub/c", "sub/d", "sub/deeper/e",
    ]  # fmt: skip
    assert [n.as_posix() for n in output_names(videos[3:5])] == ["c", "d"]
    assert is_batch([str(clips)]) and is_batch(["*.mp4"]) and is_batch(["@x.txt", "y.mp4"])
    assert not is_batch([str(clips / "a.mp4")]) and not is_batch(["missing.mp4"])

    with pytest.raises(OvsegError, match="would both be written to --out/a"):
        output_names([clips / "a.mp4", clips / "a.mkv"])
    with pytest.raises(OvsegError, match="folder would lie inside"):
        output_names([clips / "a.mp4", clips / "a" / "b.mp4"])
    with pytest.raises(OvsegError, match="no video files in the folder"):
        expand_inputs([str(tmp_path / "lists")])


def test_manifest_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    with Manifest(path, "run1") as m:
        m.append({"input": "/v/a.mp4", "status": "done", "frames": 3})
    with open(path, "ab") as f:
        f.write(b'{"run": "run1", "input": "/v/b.mp4", "sta')  # SIGKILL mid-line
    assert [r["input"] for r in read_manifest(path)] == ["/v/a.mp4"]
    with Manifest(path, "run2") as m:
        m.append({"input": "/v/b.mp4", "status": "failed", "error": "x"})
    records = read_manifest(path)
    assert [(r["run"], r["input"]) for r in records] == [("run1", "/v/a.mp4"), ("run2", "/v/b.mp4")]
    assert latest(records)["/v/b.mp4"]["status"] == "failed"


def test_batch_of_six_with_a_corrupt_one(tmp_path: Path, clips: Path, tiny_weights: Path) -> None:
    out = tmp_path / "out"
    res = _segment(clips, "-c", "road,sky", "--masks", "--no-overlay", "--out", out,
                   *_tiny(tiny_weights))  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "5 done, 1 failed, 0 skipped" in res.output and "sub/broken" in res.output
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 6 and len({r["run"] for r in records}) == 1
    status = {r["output"]: r for r in records}
    assert {k: r["status"] for k, r in status.items()} == {
        **dict.fromkeys(GOOD, "done"), "sub/broken": "failed",
    }  # fmt: skip
    assert "broken.mp4" in status["sub/broken"]["error"]
    assert status["a"]["frames"] == 8 and status["sub/deeper/e"]["frames"] == 9
    assert len({r["fingerprint"] for r in records}) == 1
    assert read_marker(out)["kind"] == "batch" and not _partials(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a", "b", "manifest.jsonl", "sub"]
    assert not (out / "sub" / "broken").exists()

    for name, video in zip(GOOD, ["a.mp4", "b.mkv", "sub/c.mp4", "sub/d.mov", "sub/deeper/e.mp4"],
                           strict=True):  # fmt: skip
        single = tmp_path / "single" / name
        ok = _segment(clips / video, "-c", "road,sky", "--masks", "--no-overlay", "-o", single,
                      "-q", *_tiny(tiny_weights))  # fmt: skip
        assert ok.exit_code == 0, ok.output
        assert _masks(out / name) == _masks(single) and len(_masks(single)) > 0
        batch_meta = json.loads((out / name / "meta.json").read_text())
        single_meta = json.loads((single / "meta.json").read_text())
        assert batch_meta["settings_fingerprint"] == single_meta["settings_fingerprint"]
        assert batch_meta["settings_fingerprint"] == records[0]["fingerprint"]

    again = _segment(clips, "-c", "road,sky", "--masks", "--no-overlay", "--out", out,
                     *_tiny(tiny_weights))  # fmt: skip  # the failed one is retried
    assert again.exit_code == 1 and "0 done, 1 failed, 5 skipped" in again.output


def test_settings_changes_need_overwrite(tmp_path: Path, tiny_weights: Path) -> None:
    videos = tmp_path / "v"
    make_video(videos / "one.mp4", frames=3)
    make_video(videos / "two.mp4", frames=3)
    out = tmp_path / "out"
    args = [videos, "-c", "road,sky", "--no-overlay", "--masks", "--out", out, "-q",
            *_tiny(tiny_weights)]  # fmt: skip
    assert _segment(*args).exit_code == 0
    first = (out / "one" / "meta.json").stat().st_mtime_ns

    changed = _segment(*args, "--threshold", "0.9")
    assert changed.exit_code == 2 and "2 folder(s)" in changed.output
    assert "other settings" in changed.output and "--overwrite" in changed.output
    # operational settings do not change what is written: nothing to redo
    same = _segment(*args, "--batch", "2", "--device", "cpu")
    assert same.exit_code == 0 and (out / "one" / "meta.json").stat().st_mtime_ns == first
    redo = _segment(*args, "--threshold", "0.9", "--overwrite")
    assert redo.exit_code == 0
    assert json.loads((out / "one" / "meta.json").read_text())["config"]["threshold"] == 0.9
    assert [r["status"] for r in _runs(out / "manifest.jsonl")[-1]] == ["done", "done"]

    make_video(videos / "two.mp4", frames=4)  # the video changed: its folder is stale
    stale = _segment(*args, "--threshold", "0.9")
    assert stale.exit_code == 2 and "changed video (first: two)" in stale.output


def test_batch_refusals(tmp_path: Path, clips: Path, tiny_weights: Path) -> None:
    cases = [
        ([clips, "-c", "a"], "several videos need --out DIR"),
        ([clips, clips / "a.mp4", "-c", "a", "-o", clips / "sub"], "holds an input"),
        ([clips, "-c", "a", "-o", tmp_path / "x", "--engine", "spark"], "--engine must be one"),
        ([clips / "a.mp4", "-c", "a", "--engine", "ray"], "--engine ray runs batches"),
        ([clips, "-c", "a", "-o", tmp_path / "x", "--ray-address", "auto"], "needs --engine ray"),
        ([tmp_path / "nothing" / "*.mp4", "-c", "a", "-o", tmp_path / "x"], "no video files"),
    ]
    single = tmp_path / "single"
    assert (
        _segment(clips / "a.mp4", "-c", "a", "-o", single, "-q", *_tiny(tiny_weights)).exit_code
        == 0
    )
    cases.append(([clips, "-c", "a", "-o", single], "holds an ovseg segment output, not a batch"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    cases.append(([clips, "-c", "a", "-o", foreign], "ovseg did not write"))
    for args, message in cases:
        res = _segment(*args, *_tiny(tiny_weights))
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) <= 3
    assert not (tmp_path / "x").exists() and (foreign / "mine.txt").exists()


def test_python_api_reuses_one_model(
    tmp_path: Path, clips: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovseg_cli.segment.loading as loading
    from ovseg_cli.batch import segment_videos

    def no_load(*args, **kwargs):
        raise AssertionError("the model given must be used")

    monkeypatch.setattr(loading, "load_model", no_load)
    calls = []
    encode = type(tiny_model).encode_vocabulary
    monkeypatch.setattr(type(tiny_model), "encode_vocabulary",
                        lambda self, c: calls.append(c) or encode(self, c))  # fmt: skip
    out = tmp_path / "out"
    frames = []
    results = segment_videos(
        [clips / "a.mp4", clips / "sub"], "road,sky", out=out, model=tiny_model, masks=True,
        overlay=False, on_progress=lambda item, n: frames.append((item.name.as_posix(), n)),
    )  # fmt: skip
    got = {r.item.name.as_posix(): r for r in results}
    assert {k: r.status for k, r in got.items()} == {
        "a": "done", "sub/broken": "failed", "sub/c": "done", "sub/d": "done",
        "sub/deeper/e": "done",
    }  # fmt: skip
    assert len(calls) == 1  # one vocabulary for the whole batch
    assert got["sub/c"].run is not None and got["sub/c"].run.frames == 7
    assert ("sub/c", 7) in frames and ("a", 0) in frames


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ovseg_cli", *map(str, args)]


def _wait_for(check, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"ended first: {proc.communicate()[0]}")
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def _mid_video(out: Path, done: int):
    """True once ``done`` videos are in the manifest and another one has written 3 masks."""

    def check() -> bool:
        if len(read_manifest(out / "manifest.jsonl")) < done:
            return False
        return any(len(list((p / "masks").glob("*.png"))) >= 3 for p in _partials(out))

    return check


def test_stopped_killed_and_resumed(tmp_path: Path, tiny_weights: Path) -> None:
    """SIGTERM cleans the video in progress; SIGKILL leaves it, and the rerun does only the
    rest; a second rerun has nothing to do."""
    videos = tmp_path / "long"
    names = [f"clip{i}" for i in range(6)]
    for name in names:  # long enough to be stopped mid-video with the tiny model
        make_video(videos / f"{name}.mp4", frames=150, size=(96, 64))
    out = tmp_path / "out"
    args = [videos, "-c", "road,sky", "--masks", "--no-overlay", "--out", out,
            *_tiny(tiny_weights)]  # fmt: skip
    proc = subprocess.Popen(_cli("segment", *args), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for(_mid_video(out, 1), proc)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, text
    assert "partial output removed" in text and not _partials(out)
    stopped = [r["output"] for r in read_manifest(out / "manifest.jsonl")]
    assert stopped and all((out / n / "meta.json").exists() for n in stopped)

    proc = subprocess.Popen(_cli("segment", *args), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    # its records: the first run's, its own "skipped" for them, then one video done
    _wait_for(_mid_video(out, 2 * len(stopped) + 1), proc)
    proc.kill()  # no cleanup can run
    proc.wait(timeout=30)
    left = _partials(out)
    assert len(left) == 1, left  # the video it was writing
    runs = _runs(out / "manifest.jsonl")
    before = {r["output"] for run in runs for r in run if r["status"] == "done"}
    assert len(before) >= len(stopped) + 1

    res = _segment(*args)
    assert res.exit_code == 0, res.output
    last = _runs(out / "manifest.jsonl")[-1]
    assert {r["output"] for r in last if r["status"] == "skipped"} == before
    assert {r["output"] for r in last if r["status"] == "done"} == set(names) - before
    assert not _partials(out) and not left[0].exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "manifest.jsonl", *names])
    for name in names:
        meta = json.loads((out / name / "meta.json").read_text())
        assert meta["output"]["frames"] == 150 and len(_masks(out / name)) == 150
    stamps = {n: (out / n / "meta.json").stat().st_mtime_ns for n in names}

    again = _segment(*args)
    assert again.exit_code == 0 and "nothing to do: all 6 videos are complete" in again.output
    assert [r["status"] for r in _runs(out / "manifest.jsonl")[-1]] == ["skipped"] * 6
    assert stamps == {n: (out / n / "meta.json").stat().st_mtime_ns for n in names}


def test_missing_and_unreadable_files_fail_alone(tmp_path: Path, tiny_weights: Path) -> None:
    good = make_video(tmp_path / "good.mp4", frames=3)
    text = make_text_file(tmp_path / "notes.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("good.mp4\nnotes.mp4\ngone.mp4\n")
    out = tmp_path / "out"
    res = _segment(f"@{listing}", "-c", "a,b", "-o", out, *_tiny(tiny_weights))
    assert res.exit_code == 1, res.output
    got = latest(read_manifest(out / "manifest.jsonl"))
    assert got[str(good)]["status"] == "done"
    assert got[str(text)]["status"] == "failed" and "not a readable" in got[str(text)]["error"]
    assert "no such file" in got[str(tmp_path / "gone.mp4")]["error"]


def test_a_dead_worker_on_another_host_has_its_partial_removed(tmp_path: Path) -> None:
    """What a Ray driver does for a worker that died elsewhere: remove_stale cannot tell
    whether another host's writer is alive, remove_abandoned is told."""
    from ovseg_cli.outputs import remove_abandoned, remove_stale, write_marker

    final = tmp_path / "video"
    dead = {"pid": 4242, "start": "77", "host": "node-7"}
    other = {"pid": 4243, "start": "78", "host": "node-7"}
    partials = []
    for writer in (dead, other):
        p = tmp_path / f".video.partial-{writer['pid']}"
        p.mkdir()
        write_marker(p, "segment")
        marker = json.loads((p / MARKER).read_text())
        (p / MARKER).write_text(json.dumps({**marker, "writer": writer}))
        partials.append(p)
    assert remove_stale(final) == [] and all(p.exists() for p in partials)
    assert remove_abandoned(final, dead) == [partials[0]]
    assert not partials[0].exists() and partials[1].exists()
