"""Hostile input, round two (issue 21): wrong masks, signals, messages (cases 2, 12-16, 18, 19)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from dataset_factory import make_folder
from typer.testing import CliRunner

from ovseg_cli.cli import app

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(*args: str | Path):
    return runner.invoke(app, list(map(str, args)))


def _tiny(weights: Path) -> list[str | Path]:
    return ["--clip", "ovseg-tiny", "--pretrained", weights]


def test_case_02_stride_larger_than_the_window_is_refused(
    tmp_path: Path, small_video: Path, tiny_weights: Path
) -> None:
    res = _run("segment", small_video, "-c", "a,b", "--window", "32", "--stride", "100",
               "--out", tmp_path / "o", *_tiny(tiny_weights))  # fmt: skip
    assert "stride (100 px) must not exceed window (32 px)" in one_line_error(res)
    assert not (tmp_path / "o").exists()


def test_case_02_windows_always_cover_the_image() -> None:
    from ovseg_cli.clip.sliding import merge_window_logits, window_boxes

    with pytest.raises(ValueError, match="gaps"):
        window_boxes(64, 192, 32, 100)
    for h, w, crop, stride in [(64, 192, 32, 32), (70, 300, 64, 48), (33, 500, 32, 17)]:
        boxes = window_boxes(h, w, crop, stride)
        emb = torch.randn(len(boxes), 1, 4, 2, 2)
        logits = merge_window_logits(emb, torch.randn(3, 4), boxes, (h, w))
        assert torch.isfinite(logits).all()
    gappy = [(0, 32, 0, 32), (0, 32, 100, 132)]  # what stride 100 gave: never divided by 0
    with pytest.raises(ValueError, match="do not cover"):
        merge_window_logits(torch.randn(2, 1, 4, 2, 2), torch.randn(3, 4), gappy, (32, 132))


def test_case_18_window_none_is_accepted_as_help_says(
    tmp_path: Path, small_video: Path, tiny_weights: Path
) -> None:
    res = _run("segment", small_video, "-c", "a,b", "--window", "none", "--no-overlay",
               "--masks", "--end", "0.1", "--out", tmp_path / "o", *_tiny(tiny_weights))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "window: null" in (tmp_path / "o" / "config.yaml").read_text()
    res = _run("segment", small_video, "-c", "a,b", "--window", "abc", "--out", tmp_path / "x")
    assert "window must be int, not 'abc'" in one_line_error(res)


def test_case_12_sigterm_while_loading_is_an_interruption(
    tmp_path: Path, small_video: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovseg_cli.segment.loading as loading

    def load_model(*args, **kwargs):
        # what an extension module does with a signal during its import: ImportError
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None
        raise AssertionError("no signal arrived")

    monkeypatch.setattr(loading, "load_model", load_model)
    res = _run("segment", small_video, "-c", "a,b", "--out", tmp_path / "o", *_tiny(tiny_weights))
    line = one_line_error(res, code=143)
    assert line == "error: interrupted (SIGTERM); partial output removed"
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial-*"))


def test_case_13_an_open_cut_short_by_ctrl_c_is_an_interruption(
    tmp_path: Path, small_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import av

    def blocked_open(*args, **kwargs):
        # the signal lands in a blocking open(): FFmpeg reports EINTR, PyAV raises that
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise OSError(errno.EINTR, "Interrupted system call") from None
        raise AssertionError("no signal arrived")

    monkeypatch.setattr(av, "open", blocked_open)
    res = _run("segment", small_video, "-c", "a,b", "--out", tmp_path / "o")
    line = one_line_error(res, code=130)
    assert line == "error: interrupted (SIGINT); partial output removed"


def _wait_until_blocked_in_the_fifo(pid: int, timeout: float = 120.0) -> None:
    """Until the process waits for a FIFO's writer (Linux: its wchan); elsewhere a pause."""
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        time.sleep(8)
        return
    deadline = time.monotonic() + timeout
    while wchan.read_text().strip() != "wait_for_partner":  # the kernel's FIFO open wait
        assert time.monotonic() < deadline, "ovseg never reached the FIFO's open()"
        time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_case_13_ctrl_c_while_opening_a_fifo_is_an_interruption(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: none will
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovseg_cli", "segment", str(fifo), "-c", "a,b", "--out",
         str(tmp_path / "o")],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_until_blocked_in_the_fifo(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert out.strip().splitlines()[-1] == "error: interrupted (SIGINT); partial output removed"


def test_case_14_bad_set_values_name_set_not_the_file(tmp_path: Path) -> None:
    config = tmp_path / "smoke.yaml"
    config.write_text("optim: {lr: 1.0e-3, steps: 2}\n")
    data = tmp_path / "data"
    data.mkdir()
    for value, message in [("nan", "finite number, not 'nan'"), ("abc", "float, not 'abc'")]:
        res = _run("train", "--config", config, "--set", f"optim.lr={value}", "--data", data,
                   "--out", tmp_path / "run")  # fmt: skip
        line = one_line_error(res)
        assert line.startswith("error: --set: optim.lr must be ") and message in line, line
        assert "smoke.yaml" not in line


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("road\nsky\n".encode("utf-16-be"), "U+0000 (a UTF-16 file? save it as UTF-8)"),
        (b"road\nsk\x00y\n", "U+0000"),
        (b"road\nsky: blue\x07sky\n", "U+0007"),
    ],
)
def test_case_15_control_characters_in_class_names_are_refused(
    tmp_path: Path, small_video: Path, tiny_weights: Path, content: bytes, where: str
) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_bytes(content)
    res = _run("segment", small_video, "--classes-file", classes, "--masks", "--out",
               tmp_path / "o", *_tiny(tiny_weights))  # fmt: skip
    assert f"contains the control character {where}" in one_line_error(res)
    assert not (tmp_path / "o").exists()
    res = _run("segment", small_video, "-c", "road,s\x1bky", "--out", tmp_path / "o")
    assert "contains the control character U+001B" in one_line_error(res)


def test_case_16_checkpoint_without_its_digest_loads_with_a_warning(
    tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ovseg_cli.model.checkpoint import load_checkpoint

    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_checkpoint.with_suffix(suffix), tmp_path / f"old{suffix}")
    meta_path = tmp_path / "old.json"
    meta = json.loads(meta_path.read_text())
    del meta["weights_sha256"]
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        load_checkpoint(tmp_path / "old.safetensors")
    assert "records no weights_sha256" in caplog.text and "cannot be verified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        load_checkpoint(tiny_checkpoint)  # a checkpoint with its digest: no word
    assert "cannot be verified" not in caplog.text


def test_case_19_eval_classes_file_is_checked_before_the_model_loads(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovseg_cli.segment.loading as loading
    from ovseg_cli.datasets import prepare

    data = prepare("folder", make_folder(tmp_path / "raw", frames=4), tmp_path / "prep",
                   seen="0,1").out_dir  # fmt: skip

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the classes file was read")

    monkeypatch.setattr(loading, "load_model", no_model)
    unreadable = tmp_path / "classes"
    unreadable.mkdir()  # a folder: unreadable as a file whoever runs the test
    bad = tmp_path / "bad.txt"
    bad.write_text("skyy: sky\n")
    for classes_file, message in [(unreadable, "is a folder"), (bad, "'skyy' is not a class")]:
        res = _run("eval", "--data", data, "--classes-file", classes_file, "-o",
                   tmp_path / "report", *_tiny(tiny_weights))  # fmt: skip
        assert message in one_line_error(res)
        assert not (tmp_path / "report").exists()
