"""CUDA: the numbers the CPU gives, and every command on ``--device cuda``.

Marked ``gpu`` and skipped where torch sees no CUDA device. Every other test runs on the CPU
(conftest sets ``OVSEG_DEVICE=cpu``, what ``--device auto`` means to ovseg); these ask for
CUDA by name. ``OVSEG_TEST_GPU=cpu`` runs them on the CPU instead, to check the tests' own
code on a machine without a GPU (the comparisons are then trivially met).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ovseg_cli.cli import app

pytestmark = pytest.mark.gpu
runner = CliRunner()
CLASSES = "road,sky,tree,car,person"


@pytest.fixture(scope="module")
def gpu() -> str:
    """The device under test: CUDA, or a skip where there is none."""
    device = os.environ.get("OVSEG_TEST_GPU", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    return device


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Two smooth frames (noise would make every precision look equally bad)."""
    y, x = np.mgrid[0:224, 0:320].astype(np.float32)
    images = []
    for t in (0.0, 0.7):
        rgb = np.stack([np.sin(x / 23 + t), np.cos(y / 17 - t), np.sin((x + y) / 31)], -1)
        images.append(((rgb + 1) * 127.5).astype(np.uint8))
    return images


def _vit_b16_logits(device: str, precision: str, frames: list[np.ndarray]) -> torch.Tensor:
    from ovseg_cli.classes import parse_classes
    from ovseg_cli.segment.loading import load_model

    # pretrained none: open_clip's weights from a fixed seed, the same on every device
    model = load_model(
        clip="ViT-B-16", pretrained="none", device=device, precision=precision, size=224,
        temporal=False, runtime="torch",
    )  # fmt: skip
    vocabulary = model.encode_vocabulary(parse_classes(CLASSES))
    images = torch.cat([model.prepare(f) for f in frames])
    logits, _ = model.step_batch(images, model.init_state(), vocabulary)
    return torch.stack(logits).float().cpu()


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cpu_logits(frames: list[np.ndarray]) -> torch.Tensor:
    return _vit_b16_logits("cpu", "fp32", frames)


def test_cuda_fp32_logits_equal_the_cpu(gpu: str, frames, cpu_logits: torch.Tensor) -> None:
    assert _relative_l2(_vit_b16_logits(gpu, "fp32", frames), cpu_logits) <= 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_logits_within_two_percent(
    gpu: str, frames, cpu_logits: torch.Tensor, precision: str
) -> None:
    if precision == "bf16" and gpu.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert _relative_l2(_vit_b16_logits(gpu, precision, frames), cpu_logits) <= 0.02


def _masks(out: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))])


def _segment(video: Path, out: Path, *args: str | Path) -> dict:
    res = runner.invoke(
        app, ["segment", str(video), "-c", CLASSES, "--masks", "-o", str(out), "-q",
              *map(str, args)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads((out / "meta.json").read_text())


def test_batch_8_equals_batch_1(gpu: str, tmp_path: Path, small_video: Path) -> None:
    common = ["--clip", "ViT-B-16", "--pretrained", "none", "--size", "224", "--device", gpu,
              "--precision", "fp32"]  # fmt: skip
    _segment(small_video, tmp_path / "b1", *common, "--batch", "1")
    _segment(small_video, tmp_path / "b8", *common, "--batch", "8")
    one, eight = _masks(tmp_path / "b1"), _masks(tmp_path / "b8")
    assert one.shape == eight.shape and len(one) == 12
    # batched GEMMs may round differently: a near tie may flip, nothing more
    assert (one == eight).mean() >= 0.999


def test_segment_training_free_and_with_a_checkpoint(
    gpu: str, tmp_path: Path, small_video: Path, tiny_weights: Path, tiny_checkpoint: Path
) -> None:
    meta = _segment(small_video, tmp_path / "free", "--clip", "ovseg-tiny", "--pretrained",
                    tiny_weights, "--device", gpu)  # fmt: skip
    assert meta["output"]["frames"] == 12 and meta["model"]["device"].startswith(gpu)
    meta = _segment(small_video, tmp_path / "ckpt", "--checkpoint", tiny_checkpoint,
                    "--device", gpu)  # fmt: skip
    assert meta["output"]["frames"] == 12 and meta["model"]["device"].startswith(gpu)
    assert meta["model"]["kind"] == "ov2vss"
    assert len(_masks(tmp_path / "ckpt")) == 12


def test_eval_and_train_steps(gpu: str, tmp_path: Path, tiny_weights: Path) -> None:
    from dataset_factory import make_folder, make_shapes

    from ovseg_cli.datasets import prepare

    data = prepare("folder", make_folder(tmp_path / "raw", frames=6), tmp_path / "prep",
                   seen="0,1").out_dir  # fmt: skip
    res = runner.invoke(app, ["eval", "--data", str(data), "--clip", "ovseg-tiny", "--pretrained",
                              str(tiny_weights), "--device", gpu, "-o", str(tmp_path / "report"),
                              "--examples", "0", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert 0 <= report["mIoU"] <= 1

    shapes = prepare("folder", make_shapes(tmp_path / "shapes", size=64), tmp_path / "sp").out_dir
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {clip: ovseg-tiny, pretrained: none, dim: 16, pool_sizes: [1, 2, 4], regions: 4,\n"
        "        text_heads: 2, cost_dim: 8, guidance_dim: 8, size: 64}\n"
        "data: {crop: [64, 64], scale: [1.0, 1.0], flip: false, jitter: 0.0, batch: 2, workers: 0}\n"
        "optim: {lr: 2.0e-3, warmup_steps: 1, steps: 4}\n"
        "run: {log_every: 1, ckpt_every: 4, val_every: 0}\n"
    )
    res = runner.invoke(app, ["train", "--config", str(config), "--data", str(shapes), "--out",
                              str(tmp_path / "run"), "--device", gpu])  # fmt: skip
    assert res.exit_code == 0, res.output
    losses = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [d["step"] for d in losses if "loss" in d] == [1, 2, 3, 4]
    assert all(np.isfinite(d["loss"]) for d in losses if "loss" in d)
    assert (tmp_path / "run" / "last.safetensors").is_file()


def test_overlay_drawn_on_the_gpu_is_the_cpu_one(gpu: str) -> None:
    from ovseg_cli.classes import UNLABELLED, default_color
    from ovseg_cli.video.rendering import DeviceOverlayRenderer, OverlayRenderer

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (720, 1280), dtype=np.uint8)
    mask[:50] = UNLABELLED
    names, colors = CLASSES.split(","), [default_color(i) for i in range(5)]
    cpu = OverlayRenderer(names, colors).render(frame, mask)
    on_gpu = DeviceOverlayRenderer(names, colors, device=gpu).render(frame, mask)
    assert np.array_equal(on_gpu, cpu)  # the default alpha 0.5 blends exactly alike
