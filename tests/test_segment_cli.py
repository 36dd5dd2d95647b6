"""`ovseg segment` end to end on small synthetic videos, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from video_factory import (
    corrupt_middle,
    make_audio_only,
    make_empty_video,
    make_text_file,
    make_vfr_video,
    make_video,
)

from ovseg_cli.cli import app

runner = CliRunner()


def _segment(*args: str | Path):
    return runner.invoke(app, ["segment", *map(str, args)], catch_exceptions=False)


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


def _no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _video_stream_facts(path: Path) -> tuple[int, Fraction, list[str], tuple[int, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        audio = [s.codec_context.name for s in c.streams.audio]
        return frames, v.average_rate, audio, (v.width, v.height)


def test_segment_writes_overlay_masks_and_meta(
    tmp_path: Path, small_video: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    res = _segment(
        small_video, "--classes", "road, sky,horse", "--masks", "-o", out, *_tiny(tiny_weights)
    )
    assert res.exit_code == 0, res.output
    assert "done: 12 frames" in res.output

    frames, rate, audio, size = _video_stream_facts(out / "overlay.mp4")
    assert frames == 12 and rate == Fraction(30000, 1001) and audio == ["aac"] and size == (96, 64)

    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks[:2]] == ["000000.png", "000001.png"] and len(masks) == 12
    for m in masks:
        img = Image.open(m)
        assert img.mode == "P" and img.size == (96, 64)
        assert np.asarray(img).max() < 3

    lines = (out / "labelmap.txt").read_text().splitlines()
    assert lines[1:] == ["road:230,25,75::", "sky:60,180,75::", "horse:255,225,25::"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["input"]["fps"] == "30000/1001" and meta["input"]["audio"] is True
    assert meta["output"]["frames"] == 12 and meta["output"]["skipped_frames"] == 0
    assert [c["name"] for c in meta["classes"]] == ["road", "sky", "horse"]
    assert meta["model"]["clip"] == "ovseg-tiny" and meta["model"]["weights"] == str(tiny_weights)
    assert meta["model"]["temporal_fusion"]["history"] == 2
    assert len(meta["prompt_templates"]) == 80 and meta["timings"]["fps"] > 0  # the default
    assert "pretrained: " in (out / "config.yaml").read_text()
    assert _no_partials(tmp_path)


def test_default_output_folder_and_overwrite(
    tmp_path: Path, small_video: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [small_video, "-c", "a,b", "--no-overlay", "--masks", "-q", *_tiny(tiny_weights)]
    assert _segment(*args).exit_code == 0
    out = tmp_path / "small_ovseg"
    assert (out / "masks" / "000011.png").exists() and not (out / "overlay.mp4").exists()
    (out / "marker").write_text("old run")

    again = _segment(*args)
    assert (
        again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output
    )
    assert (out / "marker").exists()

    assert _segment(*args, "--overwrite").exit_code == 0
    assert not (out / "marker").exists() and (out / "meta.json").exists()
    assert _no_partials(tmp_path)


def test_range_classes_file_and_quiet(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=30, size=(64, 48), rate=10, audio=True)
    classes = tmp_path / "classes.txt"
    classes.write_text("person: person, pedestrian\nsky: #87ceeb\n")
    out = tmp_path / "out"
    res = _segment(
        video, "--classes-file", classes, "--start", "1", "--end", "2.5", "-o", out, "-q",
        "--masks", "--no-temporal", *_tiny(tiny_weights),
    )  # fmt: skip
    assert res.exit_code == 0 and res.output == ""
    frames, rate, audio, _ = _video_stream_facts(out / "overlay.mp4")
    assert frames == 15 and rate == 10 and audio == ["aac"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"][1]["color"] == [135, 206, 235]
    assert meta["classes"][0]["prompts"] == ["person", "pedestrian"]
    assert meta["model"]["temporal_fusion"] is None
    with av.open(str(out / "overlay.mp4")) as c:
        assert float(c.streams.audio[0].duration * c.streams.audio[0].time_base) == pytest.approx(
            1.5, abs=0.1
        )


def test_odd_size_and_variable_frame_rate(tmp_path: Path, tiny_weights: Path) -> None:
    odd = make_video(tmp_path / "odd.mp4", frames=5, size=(65, 49))
    out = tmp_path / "odd_out"
    assert (
        _segment(odd, "-c", "a,b", "--masks", "-o", out, "-q", *_tiny(tiny_weights)).exit_code == 0
    )
    assert Image.open(out / "masks" / "000004.png").size == (65, 49)
    assert _video_stream_facts(out / "overlay.mp4")[0] == 5

    vfr = make_vfr_video(tmp_path / "vfr.mp4")
    out = tmp_path / "vfr_out"
    assert _segment(vfr, "-c", "a,b", "-o", out, "-q", *_tiny(tiny_weights)).exit_code == 0
    with av.open(str(vfr)) as src, av.open(str(out / "overlay.mp4")) as dst:
        t_in = [f.time for f in src.decode(video=0)]
        t_out = [f.time for f in dst.decode(video=0)]
    assert t_out == pytest.approx([t - t_in[0] for t in t_in], abs=1e-3)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "folder.mp4").mkdir()
    not_clip = d / "not_clip.safetensors"
    not_clip.write_bytes(b"\x00" * 64)
    return {
        "missing": d / "nope.mp4",
        "folder": d / "folder.mp4",
        "text": make_text_file(d / "notes.mp4"),
        "audio": make_audio_only(d / "tone.m4a"),
        "empty": make_empty_video(d / "empty.mkv"),
        "not_clip": not_clip,
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (("video:missing", "-c", "a"), "no such file"),
        (("video:folder", "-c", "a"), "folder"),
        (("video:text", "-c", "a"), "notes.mp4"),
        (("video:audio", "-c", "a"), "no video stream"),
        (("video:empty", "-c", "a"), "empty.mkv"),
        (("video:good", "-c", ""), "--classes is empty"),
        (("video:good", "-c", "road,,sky"), "class 2 of 3 is empty"),
        (("video:good", "-c", "road,sky,road"), "named twice"),
        (("video:good",), "no classes"),
        (("video:good", "-c", "a", "--clip", "ViT-Q-99"), "unknown CLIP architecture"),
        (("video:good", "-c", "a", "--pretrained", "file:not_clip"), "is not a CLIP checkpoint"),
        (("video:good", "-c", "a", "--start", "5", "--end", "2"), "must be after start"),
        (("video:good", "-c", "a", "--start", "60"), "small.mp4"),
        (("video:good", "-c", "a", "--no-overlay"), "nothing to write"),
        (("video:good", "-c", "a", "--dense-method", "clearclp"), "did you mean 'clearclip'"),
        (("video:good", "-c", "a", "--config", "file:missing"), "config file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, small_video: Path, tiny_weights: Path, bad_inputs: dict[str, Path],
    case: tuple[str, ...], message: str,
) -> None:  # fmt: skip
    args: list[str] = []
    for a in case:
        if a.startswith("video:"):
            key = a.split(":", 1)[1]
            args.append(str(small_video if key == "good" else bad_inputs[key]))
        elif a.startswith("file:"):
            args.append(str(bad_inputs[a.split(":", 1)[1]]))
        else:
            args.append(a)
    if "--clip" not in args:
        args += ["--clip", "ovseg-tiny"]
    if "--pretrained" not in args:
        args += ["--pretrained", str(tiny_weights)]
    out = tmp_path / "out"
    res = _segment(*args, "-o", out)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 3  # one line, perhaps wrapped by the terminal
    assert not out.exists() and _no_partials(tmp_path)


def test_unwritable_output(tmp_path: Path, small_video: Path, tiny_weights: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = _segment(small_video, "-c", "a", "-o", blocker / "out", *_tiny(tiny_weights))
    assert res.exit_code == 2 and "cannot write to" in res.output
    res = _segment(small_video, "-c", "a", "-o", blocker, *_tiny(tiny_weights))
    assert res.exit_code == 2 and "not a folder" in res.output


def test_corrupt_video_is_skipped_with_a_count(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "c.mp4", frames=60, size=(96, 64), gop=5)
    corrupt_middle(video, fraction=0.5, nbytes=3000)
    out = tmp_path / "out"
    res = _segment(video, "-c", "a,b", "-o", out, "--masks", *_tiny(tiny_weights))
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output
    if res.exit_code == 0:
        meta = json.loads((out / "meta.json").read_text())
        n = meta["output"]["frames"]
        assert n + meta["output"]["skipped_frames"] >= 1 and n <= 60
        assert len(list((out / "masks").glob("*.png"))) == n
    else:
        assert not out.exists()


def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    """The installed console entry point: exit code 2 and a one-line message on stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "segment", str(tmp_path / "missing.mp4"), "-c", "a"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help_is_fast_and_lists_commands() -> None:
    import time

    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0 and "segment" in proc.stdout and "models" in proc.stdout
    assert elapsed < 2.0
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, ovseg_cli.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "False"


def test_models_lists_architectures_and_cache(tmp_path: Path) -> None:
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    assert "ovseg-tiny" in res.output and "ViT-B-16" in res.output and "openai" in res.output
    assert "RN50" not in res.output
    assert "RN50" in runner.invoke(app, ["models", "--all"]).output
