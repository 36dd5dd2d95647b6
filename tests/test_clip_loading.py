"""CLIP loading paths, all offline: tags in the cache, local files and folders, hf-hub, errors."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from ovseg_cli.clip.cache import cached_weights
from ovseg_cli.clip.loading import (
    list_architectures,
    load_clip,
    register_project_configs,
    save_random_weights,
    tensors_only_loading,
)
from ovseg_cli.errors import OvsegError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_architecture_is_registered_and_dense() -> None:
    assert "ovseg-tiny" in list_architectures()
    assert "ViT-B-16" in list_architectures()
    assert "RN50" not in list_architectures()
    assert "RN50" in list_architectures(dense_only=False)


def test_random_weights(caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_clip("ovseg-tiny", "none")
    assert bundle.random_init and bundle.native_size == 64 and bundle.patch_size == 8
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert not bundle.model.training


def test_local_file_loads_exactly(tiny_weights: Path) -> None:
    bundle = load_clip("ovseg-tiny", str(tiny_weights))
    assert bundle.weights == str(tiny_weights) and not bundle.random_init
    ref = open_clip.create_model("ovseg-tiny", pretrained=str(tiny_weights))
    assert _same_weights(bundle.model, ref)


def test_pickled_checkpoint_loads_with_weights_only(tmp_path: Path, tiny_weights: Path) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": load_file(str(tiny_weights))}, path)
    bundle = load_clip("ovseg-tiny", str(path))
    assert _same_weights(bundle.model, load_clip("ovseg-tiny", str(tiny_weights)).model)


class _Payload:
    """Pickles to a call that creates `marker`: proof, if the file appears, that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tensors_only_loading_whatever_the_caller_asks(tmp_path: Path) -> None:
    import pickle

    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"w": _Payload(marker)}, evil)
    original = torch.load
    with tensors_only_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(evil, map_location="cpu", weights_only=False, pickle_module=pickle)
    assert not marker.exists()
    assert torch.load is original  # restored on the way out


def test_pickle_refused_by_ovseg_even_where_open_clip_would_unpickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # open_clip 2.26 asked torch.load for full unpickling: the refusal must not depend on it
    def old_open_clip_create(name: str, pretrained: str | None = None, **kwargs: object):
        torch.load(pretrained, map_location="cpu", weights_only=False)
        raise AssertionError("the pickle was unpickled")

    marker, evil = tmp_path / "ran", tmp_path / "weights.pt"
    evil.write_bytes(__import__("pickle").dumps({"w": _Payload(marker)}, protocol=4))
    monkeypatch.setattr(open_clip, "create_model", old_open_clip_create)
    with pytest.raises(OvsegError, match=r"convert it to \.safetensors$"):
        load_clip("ovseg-tiny", str(evil))
    assert not marker.exists()


@pytest.fixture
def fake_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path) -> Path:
    """An HF cache holding ovseg-tiny weights as a hub repo and under a registered tag."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0" * 40
    for repo, files in {
        "ovseg/tiny-test": ["open_clip_model.safetensors", "open_clip_config.json"],
        "ovseg/tiny-tag": ["open_clip_model.safetensors"],
    }.items():
        root = cache / ("models--" + repo.replace("/", "--"))
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(commit)
        for name in files:
            if name.endswith(".safetensors"):
                (snap / name).write_bytes(tiny_weights.read_bytes())
            else:
                register_project_configs()
                cfg = {"model_cfg": open_clip.get_model_config("ovseg-tiny"), "preprocess_cfg": {}}
                (snap / name).write_text(json.dumps(cfg))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    tags = dict(open_clip.pretrained._PRETRAINED.get("ovseg-tiny", {}))
    tags["test"] = open_clip.pretrained._pcfg(hf_hub="ovseg/tiny-tag/")
    tags["missing"] = open_clip.pretrained._pcfg(hf_hub="ovseg/not-downloaded/")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "ovseg-tiny", tags)
    return cache


def test_tag_is_found_in_the_hf_cache_offline(fake_hub_cache: Path, tiny_weights: Path) -> None:
    assert cached_weights("ovseg-tiny", "test") is not None
    bundle = load_clip("ovseg-tiny", "test")
    assert str(fake_hub_cache) in bundle.weights
    assert _same_weights(bundle.model, load_clip("ovseg-tiny", str(tiny_weights)).model)


def test_missing_tag_offline_says_where_it_looked(fake_hub_cache: Path) -> None:
    assert cached_weights("ovseg-tiny", "missing") is None
    with pytest.raises(OvsegError) as info:
        load_clip("ovseg-tiny", "missing")
    msg = str(info.value)
    assert "ovseg-tiny/missing" in msg and "HF_HUB_OFFLINE" in msg
    assert "models--ovseg--not-downloaded" in msg and "--pretrained /path/to" in msg


def test_missing_tag_without_network_fails_fast(
    fake_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import ovseg_cli.clip.cache as cache

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(cache, "reachable", lambda url, timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(OvsegError, match=r"huggingface\.co cannot be reached"):
        load_clip("ovseg-tiny", "missing")
    assert time.perf_counter() - t < 5


def test_hf_hub_repo_from_the_cache(fake_hub_cache: Path, tiny_weights: Path) -> None:
    bundle = load_clip("ovseg-tiny", "hf-hub:ovseg/tiny-test")
    assert bundle.arch == "hf-hub:ovseg/tiny-test"
    assert _same_weights(bundle.model, load_clip("ovseg-tiny", str(tiny_weights)).model)
    with pytest.raises(OvsegError, match="not in the Hugging Face cache"):
        load_clip("hf-hub:ovseg/absent", "openai")


def test_local_folder(tmp_path: Path, tiny_weights: Path) -> None:
    register_project_configs()
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip.get_model_config("ovseg-tiny")})
    )
    (folder / "open_clip_model.safetensors").write_bytes(tiny_weights.read_bytes())
    assert not load_clip("ovseg-tiny", str(folder)).random_init
    with pytest.raises(OvsegError, match=r"without open_clip_config\.json"):
        load_clip("ovseg-tiny", str(tmp_path))


@pytest.mark.parametrize(
    ("arch", "pretrained", "message"),
    [
        (
            "ovseg-tinny",
            "none",
            "unknown CLIP architecture 'ovseg-tinny' .*did you mean 'ovseg-tiny'",
        ),
        ("RN50", "none", "cannot run densely"),
        ("ViT-B-16", "opnai", "did you mean 'openai'"),
        ("ovseg-tiny", "no/such/file.safetensors", "file not found"),
        ("ViT-B-16", "openai", "not in the local cache"),
    ],
)
def test_loading_errors(arch: str, pretrained: str, message: str) -> None:
    with pytest.raises(OvsegError, match=message) as info:
        load_clip(arch, pretrained)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_clip_checkpoint(tmp_path: Path, tiny_weights: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("definitely not weights")
    with pytest.raises(OvsegError, match="is not a CLIP checkpoint for ovseg-tiny"):
        load_clip("ovseg-tiny", str(junk))
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"head.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(OvsegError, match="is not a CLIP checkpoint"):
        load_clip("ovseg-tiny", str(other))
    with pytest.raises(OvsegError, match="is not a CLIP checkpoint for ViT-B-32"):
        load_clip("ViT-B-32", str(tiny_weights))


def test_save_random_weights_is_seeded(tmp_path: Path) -> None:
    a = save_random_weights("ovseg-tiny", tmp_path / "a.safetensors", seed=1)
    b = save_random_weights("ovseg-tiny", tmp_path / "b.safetensors", seed=1)
    assert a.read_bytes() == b.read_bytes()
