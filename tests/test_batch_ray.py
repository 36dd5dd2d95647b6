"""`ovseg segment --engine ray` on a local two-CPU Ray cluster: the local engine's outputs,
and a worker killed mid-video."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli.batch.manifest import read_manifest
from ovseg_cli.cli import app
from ovseg_cli.outputs import read_marker

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ovseg[ray]')")

NAMES = ["v0", "v1", "v2", "v3"]
SETTINGS = ["-c", "road,sky", "--masks", "--no-overlay"]


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


def _masks(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((folder / "masks").glob("*.png"))]


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs, shut down (its processes with it) after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four videos, long enough (with one thread per worker) to be caught mid-video."""
    root = tmp_path_factory.mktemp("ray") / "in"
    root.mkdir()
    for i, name in enumerate(NAMES):
        make_video(root / f"{name}.mp4", frames=90 + 10 * i, size=(96, 64))
    return root


@pytest.fixture(scope="module")
def local_out(videos: Path, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's outputs, to compare with."""
    import torch

    out = tmp_path_factory.mktemp("local") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast as the workers' one thread on a busy machine
    try:
        res = CliRunner().invoke(app, ["segment", str(videos), *SETTINGS, "-o", str(out), "-q",
                                       *_tiny(tiny_weights)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


def test_ray_engine_matches_the_local_engine(
    cluster, videos: Path, local_out: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["segment", str(videos), *SETTINGS, "-o", str(out), "--engine", "ray",
              "--cpus-per-worker", "1", *_tiny(tiny_weights)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "4 done, 0 failed, 0 skipped" in res.output
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["output"] for r in records) == NAMES
    assert {(r["status"], r["engine"], r["attempts"]) for r in records} == {("done", "ray", 1)}
    local = {r["output"]: r for r in read_manifest(local_out / "manifest.jsonl")}
    writers = set()
    for r in records:
        assert r["fingerprint"] == local[r["output"]]["fingerprint"]
        assert _masks(out / r["output"]) == _masks(local_out / r["output"])
        meta = json.loads((out / r["output"] / "meta.json").read_text())
        assert meta["output"]["frames"] == r["frames"] == local[r["output"]]["frames"]
        writers.add(read_marker(out / r["output"])["writer"]["pid"])
    assert len(writers) == 2 and os.getpid() not in writers  # two workers, not this process
    assert not _partials(out)


def test_a_killed_worker_has_its_video_retried(
    cluster, videos: Path, local_out: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    from ovseg_cli.batch import segment_videos

    out = tmp_path / "out"
    killed: list[tuple[str, int]] = []
    stop = threading.Event()

    def kill_one_worker_mid_video() -> None:
        while not stop.is_set():
            for partial in _partials(out):
                if len(list((partial / "masks").glob("*.png"))) >= 3:
                    pid = read_marker(partial)["writer"]["pid"]  # the worker writing it
                    assert pid != os.getpid()
                    os.kill(pid, signal.SIGKILL)
                    killed.append((partial.name, pid))
                    return
            time.sleep(0.01)

    handed_out: list[str] = []

    def on_progress(item, frames: int) -> None:
        if frames == 0:
            handed_out.append(item.name.as_posix())

    watcher = threading.Thread(target=kill_one_worker_mid_video, daemon=True)
    watcher.start()
    try:
        results = list(
            segment_videos(
                videos, "road,sky", out=out, masks=True, overlay=False, clip="ovseg-tiny",
                pretrained=str(tiny_weights), engine="ray", cpus_per_worker=1,
                on_progress=on_progress,
            )
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert len(killed) == 1
    victim = killed[0][0].split(".partial-")[0].lstrip(".")
    assert handed_out[:2] == ["v3", "v2"]  # the longest videos first
    assert sorted(handed_out) == sorted([*NAMES, victim])  # the victim twice
    got = {r.item.name.as_posix(): r for r in results}
    assert {k: r.status for k, r in got.items()} == dict.fromkeys(NAMES, "done")
    assert got[victim].attempts == 2 and all(r.attempts == 1 for k, r in got.items() if k != victim)
    assert not _partials(out)  # the dead worker's partial folder is gone
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".ovseg-output.json", "manifest.jsonl", *NAMES]
    )
    for name in NAMES:
        assert _masks(out / name) == _masks(local_out / name)
        assert read_marker(out / name)["writer"]["pid"] != killed[0][1]


def test_sigterm_stops_a_batch_that_joined_a_cluster(
    cluster, videos: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    """--ray-address joins the running cluster; SIGTERM ends the workers and removes their
    partial folders (Ray's own SIGTERM handler would exit at once, leaving them)."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "ovseg_cli", "segment", str(videos), *SETTINGS, "-o", str(out),
        "--engine", "ray", "--ray-address", ray.get_runtime_context().gcs_address,
        "--cpus-per-worker", "1", *_tiny(tiny_weights),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    deadline = time.time() + 180
    while not any(len(list((p / "masks").glob("*.png"))) >= 3 for p in _partials(out)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, "no video started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    assert "interrupted (SIGTERM); partial output removed" in text
    assert not _partials(out)
    while ray.available_resources().get("CPU", 0) < 2:  # its workers are gone
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.1)
