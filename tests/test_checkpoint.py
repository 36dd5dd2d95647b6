"""Checkpoints: round trip, metadata, and clear errors for anything that does not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from ovseg_cli.clip.loading import load_clip
from ovseg_cli.clip.prompts import encode_texts
from ovseg_cli.errors import OvsegError
from ovseg_cli.model.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from ovseg_cli.model.ov2vss import OV2VSS


def _copy(ckpt: Path, dst: Path) -> Path:
    w, m = checkpoint_paths(ckpt)
    (dst / w.name).write_bytes(w.read_bytes())
    (dst / m.name).write_bytes(m.read_bytes())
    return dst / w.name


def test_round_trip_gives_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    clip = load_clip("ovseg-tiny", "none")
    model = OV2VSS(tiny_model_config(), clip).eval()
    w, m = save_checkpoint(tmp_path / "run" / "last", model, clip, classes=["a", "b"], step=7)
    assert (w.name, m.name) == ("last.safetensors", "last.json")
    meta = json.loads(m.read_text())
    assert (
        meta["step"] == 7 and meta["classes"] == ["a", "b"] and meta["clip"]["arch"] == "ovseg-tiny"
    )
    assert meta["model_config"]["dim"] == 16 and len(meta["templates"]) == 14
    assert not any(
        k.startswith("encoder.clip")
        for k in __import__("safetensors.torch").torch.load_file(str(w))
    )

    loaded, _, meta2 = load_checkpoint(tmp_path / "run" / "last.json")
    frames = torch.randint(0, 256, (1, 4, 3, 64, 64), dtype=torch.uint8)
    distant = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    text = encode_texts(clip, ["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(frames, distant, text).logits, model(frames, distant, text).logits
        )
    assert meta2["step"] == 7


def test_random_clip_is_rebuilt_from_its_seed(tiny_checkpoint: Path) -> None:
    _, clip, _ = load_checkpoint(tiny_checkpoint)  # the tiny CLIP with pretrained "none"
    assert clip.random_init


def test_missing_and_malformed_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")

    bad_json = _copy(tiny_checkpoint, tmp_path)
    checkpoint_paths(bad_json)[1].write_text("{not json")
    with pytest.raises(OvsegError, match="not valid checkpoint metadata"):
        read_metadata(bad_json)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    other = _copy(tiny_checkpoint, foreign)
    checkpoint_paths(other)[1].write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(OvsegError, match="not an OV2VSS checkpoint"):
        load_checkpoint(other)

    trunc = tmp_path / "trunc"
    trunc.mkdir()
    cut = _copy(tiny_checkpoint, trunc)
    cut.write_bytes(cut.read_bytes()[:500])
    with pytest.raises(OvsegError, match="truncated or not a safetensors file"):
        load_checkpoint(cut)


def test_config_mismatch_says_what_differs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path)
    meta_path = checkpoint_paths(ckpt)[1]
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["dim"] = 24
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        OvsegError, match=r"does not match the model its metadata describes: .*shape"
    ):
        load_checkpoint(ckpt)


def test_other_clip_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(OvsegError, match="trained with CLIP ovseg-tiny, not ViT-B-16"):
        load_checkpoint(tiny_checkpoint, clip_arch="ViT-B-16")
    from ovseg_cli.clip.loading import save_random_weights

    other = save_random_weights("ovseg-tiny", tmp_path / "other.safetensors", seed=5)
    with pytest.raises(OvsegError, match="trained on other CLIP weights"):
        load_checkpoint(tiny_checkpoint, pretrained=str(other))
    same = save_random_weights("ovseg-tiny", tmp_path / "same.safetensors", seed=0)
    load_checkpoint(tiny_checkpoint, pretrained=str(same))  # the same weights from a file: fine
    assert read_metadata(tiny_checkpoint)["clip"]["activation"] == "gelu"


def test_checkpoint_remembers_the_activation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Weights do not say which activation they need: a checkpoint trained on QuickGELU CLIP
    refuses the same weights built with plain GELU."""
    ckpt = _copy(tiny_checkpoint, tmp_path)
    meta_path = checkpoint_paths(ckpt)[1]
    meta = json.loads(meta_path.read_text())
    meta["clip"]["activation"] = "quick_gelu"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(OvsegError, match=r"quick_gelu activations.*ovseg-tiny-quickgelu"):
        load_checkpoint(ckpt)


class _Killed(BaseException):
    """A SIGKILL at one instant: the operation does not happen, nor anything after it."""


def _pair_state(path: Path) -> tuple[int, float]:
    """(step the metadata names, the weights' marker value): what a reader would load."""
    from ovseg_cli.model.checkpoint import read_weights

    meta = read_metadata(path)
    tensors = read_weights(path, meta)
    return meta["step"], float(tensors["extra/marker"][0])


def test_a_kill_at_any_instant_leaves_the_old_or_the_new_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rename and delete of a save is a possible kill point; after each, a reader sees
    the old pair or the new pair (never weights of one step with metadata of another), and
    the next save repairs what is left."""
    import functools
    import os

    from ovseg_cli.model import checkpoint_io

    clip = load_clip("ovseg-tiny", "none")
    model = OV2VSS(tiny_model_config(), clip)
    path = tmp_path / "last"

    def save(step: int) -> None:
        marker = {"marker": torch.full((1,), float(step))}
        save_checkpoint(path, model, clip, classes=["a"], step=step, extra_tensors=marker)

    save(1)
    real_replace, real_unlink = os.replace, Path.unlink
    kill_points = 0
    while True:
        calls = {"left": kill_points}

        def step_or_die(real, *args, calls=calls, **kwargs):
            if calls["left"] == 0:
                raise _Killed
            calls["left"] -= 1
            return real(*args, **kwargs)

        monkeypatch.setattr(
            checkpoint_io.os, "replace", functools.partial(step_or_die, real_replace)
        )
        monkeypatch.setattr(
            Path, "unlink", lambda self, *a, die=step_or_die, **k: die(real_unlink, self, *a, **k)
        )
        before = _pair_state(path)
        try:
            save(before[0] + 1)
            finished = True
        except _Killed:
            finished = False
        monkeypatch.undo()
        after = _pair_state(path)
        assert after[0] == after[1], (kill_points, after)  # weights and metadata of one step
        assert after[0] in (before[0], before[0] + 1)
        if finished:
            break
        kill_points += 1
    assert kill_points >= 4  # the save has that many renames and deletes to be killed between
    save(99)  # whatever a kill left is repaired
    assert _pair_state(path) == (99, 99.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]


KILL_LOOP = """
import sys, torch
from ovseg_cli.clip.loading import load_clip
from ovseg_cli.model.checkpoint import save_checkpoint
from ovseg_cli.model.config import ModelConfig
from ovseg_cli.model.ov2vss import OV2VSS
clip = load_clip("ovseg-tiny", "none")
cfg = ModelConfig(clip="ovseg-tiny", pretrained="none", dim=16, pool_sizes=(1, 2, 4), regions=4,
                  text_heads=2, cost_dim=8, guidance_dim=8, size=64)
model = OV2VSS(cfg, clip)
step = int(sys.argv[2])
print("ready", flush=True)
while True:
    step += 1
    save_checkpoint(sys.argv[1], model, clip, classes=["a"], step=step,
                    extra_tensors={"marker": torch.full((1,), float(step))})
"""


def test_sigkill_during_saves(tmp_path: Path) -> None:
    """A real process saving in a loop, killed at random instants."""
    import os
    import random
    import subprocess
    import sys
    import time

    path = tmp_path / "last"
    step = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_LOOP, str(path), str(step)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.3, 0.8))
        proc.kill()
        proc.wait(timeout=30)
        step, marker = _pair_state(path)
        assert marker == step > 0
