"""`ovseg train`: it learns, resumes exactly, stops cleanly, runs under torchrun, and refuses
bad runs early."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_factory import make_shapes
from typer.testing import CliRunner

from ovseg_cli.cli import app
from ovseg_cli.errors import OvsegError
from ovseg_cli.train.config import resolve_train_config
from ovseg_cli.train.loop import train

TINY = """\
model: {clip: ovseg-tiny, pretrained: none, dim: 16, pool_sizes: [1, 2, 4], regions: 4,
        text_heads: 2, cost_dim: 8, guidance_dim: 8, size: %(size)d}
data: {crop: [%(size)d, %(size)d], scale: [1.0, 1.0], flip: false, jitter: 0.0, batch: 2, workers: 0}
optim: {lr: 2.0e-3, warmup_steps: 10, steps: %(steps)d, schedule: %(schedule)s, precision: fp32}
run: {log_every: 1, ckpt_every: 4, val_every: 0}
"""


def _config(tmp: Path, size: int = 64, steps: int = 40, schedule: str = "constant") -> Path:
    f = tmp / "tiny.yaml"
    f.write_text(TINY % {"size": size, "steps": steps, "schedule": schedule})
    return f


def _prepare(root: Path, size: int) -> Path:
    from ovseg_cli.datasets import prepare

    return prepare("folder", make_shapes(root / "raw", size=size), root / "prepared").out_dir


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepare(tmp_path_factory.mktemp("shapes64"), 64)


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {d["step"]: d["loss"] for d in lines if "loss" in d}


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ovseg_cli", *map(str, args)]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_overfits_moving_shapes(tmp_path: Path) -> None:
    """Not a quality claim: the model and loss can learn (class = colour)."""
    data = _prepare(tmp_path, 128)
    cfg = resolve_train_config(None, _config(tmp_path, size=128, steps=160, schedule="cosine"))
    result = train(data, tmp_path / "run", cfg)
    losses = _losses(tmp_path / "run")
    first, last = losses[1], float(np.mean([losses[s] for s in range(151, 161)]))
    assert result.steps == 160 and last < 0.2 * first, (first, last)

    from ovseg_cli.config import EvalConfig, SegmentConfig
    from ovseg_cli.evaluation.report import run_eval

    seg = SegmentConfig(checkpoint=str(tmp_path / "run" / "last.safetensors"))
    report = run_eval(
        data, EvalConfig(split="all", data_split="train", vc=()), seg, out=tmp_path / "ev"
    ).report
    assert report["mIoU"] > 0.9, report["per_class"]


def test_killed_run_resumes_where_it_stopped(tmp_path: Path, shapes64: Path) -> None:
    cfg_file = _config(tmp_path, steps=400)
    reference = tmp_path / "reference"
    train(shapes64, reference, resolve_train_config(None, cfg_file, [], {"run.max_steps": 20}))

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("train", "--data", shapes64, "--out", run, "--config", cfg_file, "-q"),
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            meta = run / "last.json"
            if meta.exists():
                step = json.loads(meta.read_text())["step"]
                if step >= 8:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the run wrote no checkpoint at step 8 in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = json.loads((run / "last.json").read_text())["step"]
    assert 8 <= killed_at < 400

    res = CliRunner().invoke(app, ["train", "--data", str(shapes64), "--out", str(run), "--resume",
                                   "--max-steps", "20", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ref, resumed = _losses(reference), _losses(run)
    assert sorted(resumed) == list(range(1, 21))  # lines after the checkpoint were replaced
    for step in range(killed_at + 1, 21):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5), step


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_stop_signal_checkpoints_and_exits_non_zero(
    tmp_path: Path, shapes64: Path, signum: int, code: int
) -> None:
    """Ctrl-C, a scheduler's SIGTERM and a closed terminal's SIGHUP: a resumable checkpoint,
    then 128 + the signal, so `ovseg train && ovseg eval` does not go on."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", "--data", shapes64, "--out", run, "--config", _config(tmp_path, steps=5000)),
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (run / "last.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert f"stopped by {signal.Signals(signum).name}" in out and "--resume" in out
    step = json.loads((run / "last.json").read_text())["step"]
    assert max(_losses(run)) == step < 5000
    res = CliRunner().invoke(
        app, ["train", "--data", str(shapes64), "--out", str(run), "--resume", "--max-steps",
              str(step + 2), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((run / "last.json").read_text())["step"] == step + 2


def test_torchrun_with_two_processes(tmp_path: Path, shapes64: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "ovseg_cli", "train", "--data", str(shapes64), "--out", str(run),
        "--config", str(_config(tmp_path, steps=6)), "--device", "cpu", "-q",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines] == [1, 2, 3, 4, 5, 6]  # written once, by rank 0
    assert all(d["world"] == 2 for d in lines)
    meta = json.loads((run / "last.json").read_text())
    assert meta["step"] == 6 and meta["extra"]["train"]["world"] == 2


def test_non_finite_loss_stops_without_a_poisoned_checkpoint(
    tmp_path: Path, shapes64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovseg_cli.model.ov2vss as ov2vss

    real = ov2vss.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] >= 6:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(ov2vss, "segmentation_loss", poisoned)
    cfg = resolve_train_config(None, _config(tmp_path, steps=20))
    with pytest.raises(OvsegError, match="the loss became nan at step 6"):
        train(shapes64, tmp_path / "run", cfg)
    assert json.loads((tmp_path / "run" / "last.json").read_text())["step"] == 4


def test_bad_runs_fail_early(
    tmp_path: Path, shapes64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    cfg = str(_config(tmp_path, steps=2))
    base = ["train", "--data", str(shapes64), "--config", cfg, "-q"]
    run = tmp_path / "run"
    assert runner.invoke(app, [*base, "--out", str(run)]).exit_code == 0

    cases = [
        ([*base, "--out", str(run)], "already holds a run; pass --resume"),
        ([*base, "--out", str(tmp_path / "none"), "--resume"], "nothing to resume"),
        (["train", "--data", str(shapes64), "--out", str(run), "--resume", "--set", "optim.lr=0.5"],
         "--resume with a different config: optim.lr"),
        ([*base, "--out", str(Path(cfg) / "sub")], "cannot write to"),
        ([*base, "--out", str(tmp_path / "x"), "--set", "optim.lrr=1"], "did you mean 'lr'"),
    ]  # fmt: skip
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)

    import shutil

    from ovseg_cli.train import loop

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda p: usage._replace(free=1024))
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "full")])
    assert res.exit_code == 2 and "MiB free" in res.output


@pytest.mark.slow
def test_cpu_smoke_recipe_on_real_camvid(tmp_path: Path) -> None:
    from conftest import shared_file

    root = shared_file("camvid")
    from ovseg_cli.datasets import prepare

    data = prepare("camvid", root, tmp_path / "camvid").out_dir
    recipe = Path(__file__).resolve().parents[1] / "examples" / "configs" / "cpu-smoke.yaml"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                              "--config", str(recipe), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "run" / "last.json").read_text())
    assert meta["step"] == 60 and meta["classes"][:2] == ["Sky", "Building"]
    assert (tmp_path / "run" / "best.safetensors").exists()
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.mp4"
    res = runner.invoke(app, ["segment", str(demo), "-c", "sky,road,tree,car", "--checkpoint",
                              str(tmp_path / "run" / "last.safetensors"), "-o", str(tmp_path / "seg"),
                              "--end", "1", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "seg" / "meta.json").read_text())["model"]["kind"] == "ov2vss"
