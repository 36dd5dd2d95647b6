"""--runtime auto|torch|onnx: resolution, errors, fallback, and both segmenters on ONNX Runtime."""

from __future__ import annotations

import logging

import pytest
import torch

from ovseg_cli import runtime as rt
from ovseg_cli.config import SegmentConfig
from ovseg_cli.errors import OvsegError


@pytest.fixture(autouse=True)
def _auto_means_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here `auto` is what users get, not the test suite's torch (see conftest.py)."""
    monkeypatch.delenv("OVSEG_RUNTIME", raising=False)


CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # constructing the device needs no GPU


def test_auto_prefers_onnx_runtime_on_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    assert rt.resolve_runtime("auto", CPU) == "onnx"
    assert rt.resolve_runtime("auto", CUDA, "bf16") == "torch"
    assert rt.resolve_runtime("auto", CPU, "bf16") == "torch"  # ONNX Runtime runs fp32 only
    assert rt.resolve_runtime("torch", CPU) == "torch"


def test_auto_without_onnx_runtime_is_torch_and_onnx_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: False)
    assert rt.resolve_runtime("auto", CPU) == "torch"
    with pytest.raises(OvsegError, match=r"pip install 'ovseg\[onnx\]'") as err:
        rt.resolve_runtime("onnx", CPU)
    assert "\n" not in str(err.value)


def test_onnx_refuses_what_it_cannot_run(monkeypatch) -> None:
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    with pytest.raises(OvsegError, match="runs on the CPU"):
        rt.resolve_runtime("onnx", CUDA)
    with pytest.raises(OvsegError, match="fp32"):
        rt.resolve_runtime("onnx", CPU, "bf16")
    with pytest.raises(OvsegError, match="runtime must be one of"):
        SegmentConfig(runtime="tensorrt")


def test_onnx_runtime_missing_fails_before_loading_clip(monkeypatch) -> None:
    from ovseg_cli.segment.loading import load_model

    monkeypatch.setattr(rt, "onnxruntime_available", lambda: False)
    with pytest.raises(OvsegError, match="ovseg\\[onnx\\]"):
        load_model(SegmentConfig(clip="no-such-clip", runtime="onnx", device="cpu"))


def test_threads_follow_the_cores_the_process_may_use(monkeypatch) -> None:
    from ovseg_cli.runtime import onnx_session

    assert [onnx_session.default_threads(n) for n in (1, 2, 3, 16)] == [1, 2, 3, 16]
    monkeypatch.setattr(onnx_session.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert onnx_session.default_threads() == 3  # the cores this process may use, not the machine's
    monkeypatch.setenv("OVSEG_ONNX_THREADS", "4")
    assert onnx_session.onnx_threads() == 4
    monkeypatch.setenv("OVSEG_ONNX_THREADS", "many")
    with pytest.raises(OvsegError, match="OVSEG_ONNX_THREADS"):
        onnx_session.onnx_threads()


def test_a_failed_export_falls_back_to_torch_under_auto_only(monkeypatch, caplog) -> None:
    from ovseg_cli.clip.dense import DenseClipEncoder
    from ovseg_cli.clip.loading import load_clip

    def broken(*args, **kwargs):
        raise OvsegError("could not export the clearclip image encoder to ONNX (test)")

    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(rt, "onnx_encoder", broken)
    enc = DenseClipEncoder(load_clip("ovseg-tiny", "none").visual)
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        placed, runtime = rt.place_encoder(enc, "ovseg-tiny", "auto", CPU, "fp32")
    assert placed is enc and runtime == "torch" and "runs in torch instead" in caplog.text
    with pytest.raises(OvsegError, match="use --runtime torch"):
        rt.place_encoder(enc, "ovseg-tiny", "onnx", CPU, "fp32")


@pytest.mark.skipif(not rt.onnxruntime_available(), reason="needs ovseg[onnx]")
def test_training_free_segmenter_on_onnx_runtime_matches_torch(tiny_weights) -> None:
    from ovseg_cli.classes import parse_classes
    from ovseg_cli.segment.loading import load_model

    def build(runtime: str):
        return load_model(
            SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights), device="cpu",
                          runtime=runtime, window=64, temporal_strength=0.5)
        )  # fmt: skip

    torch_model, onnx_model = build("torch"), build("onnx")
    assert torch_model.describe()["runtime"] == "torch"
    info = onnx_model.describe()
    assert info["runtime"] == "onnx" and info["onnx"]["onnxruntime"]
    vocab = torch_model.encode_vocabulary(parse_classes("road,sky,tree"))
    states = [torch_model.init_state(), onnx_model.init_state()]
    for i in range(3):  # a few frames: the temporal state carries over in both
        image = torch.randn(1, 3, 64, 112, generator=torch.Generator().manual_seed(i))
        a, states[0] = torch_model.step(image, states[0], vocab)
        b, states[1] = onnx_model.step(image, states[1], vocab)
        assert (a - b).abs().max() <= 1e-3  # logits are scaled by CLIP's logit scale (100)


@pytest.mark.skipif(not rt.onnxruntime_available(), reason="needs ovseg[onnx]")
def test_ov2vss_checkpoint_reads_its_intermediate_blocks_from_onnx_runtime(tiny_checkpoint):
    from ovseg_cli.classes import parse_classes
    from ovseg_cli.runtime.onnx_session import OnnxDenseEncoder
    from ovseg_cli.segment.loading import load_model

    def build(runtime: str):
        return load_model(
            SegmentConfig(checkpoint=str(tiny_checkpoint), device="cpu", runtime=runtime)
        )

    torch_model, onnx_model = build("torch"), build("onnx")
    frames = onnx_model.model.encoder
    assert isinstance(frames.clip, OnnxDenseEncoder) and frames.clip.layers
    assert onnx_model.describe()["runtime"] == "onnx"
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        ref, got = torch_model.model.encode_frame(images), onnx_model.model.encode_frame(images)
    for a, b in zip([got.clip, *got.pyramid], [ref.clip, *ref.pyramid], strict=True):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-4
    vocab = torch_model.encode_vocabulary(parse_classes("road,sky"))
    a, _ = torch_model.step(images[:1], torch_model.init_state(), vocab)
    b, _ = onnx_model.step(images[:1], onnx_model.init_state(), vocab)
    assert (a - b).abs().max() <= 1e-3


def test_a_machine_may_set_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVSEG_RUNTIME", "torch")
    assert rt.resolve_runtime("auto", CPU) == "torch"
    assert rt.resolve_runtime("onnx", CPU) == "onnx"  # an explicit choice still wins


def test_ovseg_device_says_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    from ovseg_cli.devices import resolve_device

    monkeypatch.setenv("OVSEG_DEVICE", "cpu")  # what the suite runs with (conftest.py)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU  # a named device is never overridden
    monkeypatch.setenv("OVSEG_DEVICE", "bogus")
    with pytest.raises(OvsegError, match=r"^\$OVSEG_DEVICE: unknown device 'bogus'"):
        resolve_device("auto")
    monkeypatch.setenv("OVSEG_DEVICE", "auto")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_onnx_threads_far_beyond_the_usable_cores_are_capped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OVSEG_ONNX_THREADS=100000 made ONNX Runtime segfault after 32 s with no message."""
    from ovseg_cli.runtime import onnx_session

    monkeypatch.setattr(onnx_session.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for value, threads in [("8", 8), ("9", 2), ("100000", 2), ("9" * 5000, 2)]:
        monkeypatch.setenv("OVSEG_ONNX_THREADS", value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ovseg"):
            assert onnx_session.onnx_threads() == threads, value
        if threads == 8:  # a few per core: an experiment to honour, silently
            assert caplog.text == ""
        else:
            (line,) = caplog.messages
            assert line.startswith(f"OVSEG_ONNX_THREADS={value[:9]}") and line.endswith("using 2")
            assert len(line) < 200
    for value in ["0", "00", "-3", "²", "2.5"]:  # no count at all: refused as before
        monkeypatch.setenv("OVSEG_ONNX_THREADS", value)
        with pytest.raises(OvsegError, match="OVSEG_ONNX_THREADS must be a whole number"):
            onnx_session.onnx_threads()


def test_an_unknown_ovseg_runtime_is_refused_naming_the_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OVSEG_RUNTIME=foo or =pytorch was silently ignored (auto ran its own choice)."""
    from ovseg_cli.segment.loading import load_model

    monkeypatch.setattr(rt, "onnxruntime_available", lambda: True)
    monkeypatch.setenv("OVSEG_RUNTIME", "foo")
    with pytest.raises(OvsegError, match=r"^\$OVSEG_RUNTIME: unknown runtime 'foo'") as err:
        rt.resolve_runtime("auto", CPU)
    assert "auto, torch or onnx" in str(err.value) and "did you mean" not in str(err.value)
    monkeypatch.setenv("OVSEG_RUNTIME", "pytorch")
    with pytest.raises(OvsegError, match=r"did you mean 'torch'\?") as err:
        rt.resolve_runtime("auto", CPU)
    assert "\n" not in str(err.value)
    # refused before CLIP is loaded, like a bad --runtime
    with pytest.raises(OvsegError, match="OVSEG_RUNTIME"):
        load_model(SegmentConfig(clip="no-such-clip", runtime="auto", device="cpu"))
    assert rt.resolve_runtime("torch", CPU) == "torch"  # not read when --runtime names one
    for value, runtime in [(" ONNX ", "onnx"), ("Torch", "torch"), ("auto", "onnx"), ("", "onnx")]:
        monkeypatch.setenv("OVSEG_RUNTIME", value)
        assert rt.resolve_runtime("auto", CPU) == runtime, value
