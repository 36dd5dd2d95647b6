"""Shared fixtures: a tiny random CLIP saved to a file, small synthetic videos, shared data."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/video_factory.py

from video_factory import make_video

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
SHARED_DATA = SHARED / "data"
# CI sets this (.ci/run): a missing ../shared folder must fail the run, not skip its tests
REQUIRE_SHARED = os.environ.get("OVSEG_REQUIRE_SHARED_DATA", "") not in ("", "0")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason (fail where CI requires it)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"shared data not present: {path}"
        if REQUIRE_SHARED:
            pytest.fail(f"{message} (OVSEG_REQUIRE_SHARED_DATA is set)")
        pytest.skip(message)
    return path


def one_line_error(res, code: int = 2) -> str:
    """The last line of a CLI run that failed as users are promised: one ``error:`` line, the
    exit code, no traceback; returns that line."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == code, res.output
    assert lines and lines[-1].startswith("error: "), res.output
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return lines[-1]


@pytest.fixture
def disk_full_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a PNG mask fails as a full disk makes it fail (ENOSPC, naming the file)."""
    import errno

    from ovseg_cli.video import rendering

    def full(mask, palette, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rendering, "save_palette_png", full)


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason (fail where CI requires it)."""
    return shared_path("data", *parts)


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exported ONNX graphs go to a folder of this test session, never the user's cache:
    each (method, blocks) of the tiny CLIP is exported once per session, then reused."""
    folder = tmp_path_factory.mktemp("ovseg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OVSEG_CACHE_DIR", str(folder))  # inherited by CLI subprocesses too
        yield folder


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub: these machines have none."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # `auto` means torch here, so most tests need no ONNX export (tens of seconds each on a
    # small CPU); tests/test_onnx_runtime.py and test_runtime_choice.py ask for ONNX themselves
    monkeypatch.setenv("OVSEG_RUNTIME", "torch")
    # the suite's numbers, timings and memory checks assume the CPU: `auto` means cpu even
    # where a GPU is visible; tests/test_gpu.py (marked gpu) asks for CUDA itself
    monkeypatch.setenv("OVSEG_DEVICE", "cpu")
    log = logging.getLogger("ovseg")
    log.setLevel(logging.ERROR)  # random-weight warnings are expected
    # an earlier in-process CLI run set up its own handler and stopped propagation, which
    # would hide the library's records from caplog (on pytest 8.0 at least)
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", True)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ovseg-tiny CLIP weights saved as safetensors (exercises the real file loading path)."""
    from ovseg_cli.clip.loading import save_random_weights

    return save_random_weights(
        "ovseg-tiny", tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_weights: Path):
    """A training-free segmenter on the tiny CLIP, shared by tests (it is stateless)."""
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    # the native 64 px (not the default 1.5x) and ClearCLIP: small and quick, as tests need
    cfg = SegmentConfig(
        clip="ovseg-tiny", pretrained=str(tiny_weights), device="cpu", size=64,
        dense_method="clearclip", templates="vild",
    )  # fmt: skip
    return load_model(cfg)


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames of 96x64 at 30000/1001 fps with an AAC audio track."""
    path = tmp_path_factory.mktemp("videos") / "small.mp4"
    return make_video(path, frames=12, size=(96, 64), rate=Fraction(30000, 1001), audio=True)


def tiny_model_config(**overrides):
    """An OV2VSS config small enough for CPU tests, on the tiny random CLIP."""
    from ovseg_cli.model.config import ModelConfig

    base = dict(
        clip="ovseg-tiny", pretrained="none", dim=16, pool_sizes=(1, 2, 4), regions=4,
        text_heads=2, cost_dim=8, guidance_dim=8, size=64,
    )  # fmt: skip
    return ModelConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained OV2VSS checkpoint on the tiny random CLIP (seeded, so reproducible)."""
    import torch

    from ovseg_cli.clip.loading import load_clip
    from ovseg_cli.model.checkpoint import save_checkpoint
    from ovseg_cli.model.ov2vss import OV2VSS

    torch.manual_seed(0)
    clip = load_clip("ovseg-tiny", "none")
    model = OV2VSS(tiny_model_config(), clip)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(
        path, model, clip, classes=["road", "sky"], split={"seen": [0, 1], "unseen": []}
    )
    return path.with_suffix(".safetensors")
