"""Shared fixtures: a tiny random CLIP saved to a file, small synthetic videos, shared data."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/video_factory.py

from video_factory import make_video

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


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
    logging.getLogger("ovseg").setLevel(logging.ERROR)  # random-weight warnings are expected


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ovseg-tiny CLIP weights saved as safetensors (exercises the real file loading path)."""
    from ovseg_cli.clip_loading import save_random_weights

    return save_random_weights(
        "ovseg-tiny", tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_weights: Path):
    """A training-free segmenter on the tiny CLIP, shared by tests (it is stateless)."""
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segmenter import load_model

    return load_model(SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights), device="cpu"))


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

    from ovseg_cli.clip_loading import load_clip
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
