"""A bare weights file is built with the activation it was trained with (QuickGELU or GELU)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import pytest
import torch

from ovseg_cli.clip.loading import load_clip, register_project_configs
from ovseg_cli.clip.weights import file_sha256, identify_weights, registry_digests


def _register_tag(monkeypatch: pytest.MonkeyPatch, tag: str, **cfg) -> None:
    """Add a tag to open_clip's registry for ovseg-tiny, for this test only."""
    tags = dict(open_clip.pretrained._PRETRAINED.get("ovseg-tiny", {}))
    tags[tag] = open_clip.pretrained._pcfg(**cfg)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "ovseg-tiny", tags)


def _openai_url(sha: str) -> str:
    return f"https://openaipublic.azureedge.net/clip/models/{sha}/tiny.pt"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_file_keeps_the_architectures_activation(tiny_weights: Path) -> None:
    bundle = load_clip("ovseg-tiny", str(tiny_weights))
    assert bundle.activation == "gelu"
    assert load_clip("ovseg-ref-b128", "none").activation == "quick_gelu"  # its config says so


def test_known_openai_file_is_built_with_quick_gelu(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the file's digest registered the way OpenAI's URLs carry theirs
    _register_tag(
        monkeypatch, "openai", url=_openai_url(file_sha256(tiny_weights)), quick_gelu=True
    )
    origin = identify_weights(tiny_weights)
    assert origin is not None and origin.quick_gelu and "ovseg-tiny/openai" in origin.evidence
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        bundle = load_clip("ovseg-tiny", str(tiny_weights))
    assert bundle.activation == "quick_gelu"
    assert "QuickGELU, not GELU" in caplog.text  # the name said GELU: say why it is not
    plain = open_clip.create_model("ovseg-tiny", pretrained=str(tiny_weights))
    assert _same_weights(bundle.model, plain)  # same weights, other activation
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(bundle.model.encode_image(x), plain.encode_image(x))


def test_open_clip_release_digest_prefix(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = file_sha256(tiny_weights)[:8]
    url = f"https://github.com/mlfoundations/open_clip/releases/download/v0/tiny-quickgelu-{prefix}.pt"
    _register_tag(monkeypatch, "release", url=url, quick_gelu=True)
    assert registry_digests()[prefix] == ("ovseg-tiny", "release", True)
    assert load_clip("ovseg-tiny", str(tiny_weights)).activation == "quick_gelu"


def test_unknown_file_warns_and_names_both_choices(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _register_tag(monkeypatch, "openai", url=_openai_url("0" * 64), quick_gelu=True)
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        bundle = load_clip("ovseg-tiny", str(tiny_weights))
    assert bundle.activation == "gelu"
    [record] = [r for r in caplog.records if "QuickGELU" in r.getMessage()]
    assert record.name == "ovseg" and record.levelno == logging.WARNING
    message = record.getMessage()
    assert "GELU" in message and "--clip ovseg-tiny-quickgelu" in message
    assert "open_clip_config.json" in message and "\n" not in message
    # the explicit choice: built with QuickGELU, nothing to warn about
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        chosen = load_clip("ovseg-tiny-quickgelu", str(tiny_weights))
    assert chosen.activation == "quick_gelu" and chosen.arch == "ovseg-tiny-quickgelu"
    assert not caplog.records
    assert load_clip("ovseg-tiny-quickgelu", "none").activation == "quick_gelu"


@pytest.mark.parametrize("quick", [True, False])
def test_open_clip_config_beside_the_file_decides(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    _register_tag(monkeypatch, "openai", url=_openai_url("0" * 64), quick_gelu=True)
    register_project_configs()
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    cfg = {**open_clip.get_model_config("ovseg-tiny"), "quick_gelu": quick}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    expected = "quick_gelu" if quick else "gelu"
    assert load_clip("ovseg-tiny", str(weights)).activation == expected


def test_file_in_a_tags_hub_cache_folder(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register_tag(monkeypatch, "hubbed", hf_hub="ovseg/tiny-openai/", quick_gelu=True)
    snap = tmp_path / "models--ovseg--tiny-openai" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    weights = snap / "open_clip_model.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    assert load_clip("ovseg-tiny", str(weights)).activation == "quick_gelu"


def test_segmenter_reports_the_activation(tiny_model) -> None:
    assert tiny_model.describe()["activation"] == "gelu"
