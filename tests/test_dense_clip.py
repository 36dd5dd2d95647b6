"""Training-free dense CLIP: shapes, equivalence with open_clip, interpolation, windows, export.

Numerical agreement with the official code: tests/test_reference_methods.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovseg_cli.clip.dense import (
    DENSE_METHODS,
    DenseClipEncoder,
    model_input_size,
    neighbourhood_prior,
    resize_rgb,
    to_model_input,
)
from ovseg_cli.clip.loading import load_clip


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    return load_clip("ovseg-tiny", "none").visual


def test_vanilla_matches_open_clip_tokens(visual) -> None:
    x = torch.randn(2, 3, 64, 64)
    ours = DenseClipEncoder(visual, "vanilla")(x).embeddings
    visual.output_tokens = True
    try:
        _, tokens = visual(x)
    finally:
        visual.output_tokens = False
    ref = F.normalize(tokens @ visual.proj, dim=-1).transpose(1, 2).reshape(2, -1, 8, 8)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("method", sorted(DENSE_METHODS))
def test_every_method_gives_normalised_dense_embeddings(visual, method: str) -> None:
    feats = DenseClipEncoder(visual, method)(torch.randn(1, 3, 48, 120)).embeddings
    assert feats.shape == (1, 64, 6, 15)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(1, 6, 15))


def test_methods_really_differ(visual) -> None:
    x = torch.randn(1, 3, 64, 64)
    outs = {m: DenseClipEncoder(visual, m)(x).embeddings for m in DENSE_METHODS}
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_clearclip_is_qq_attention_without_residual_or_ffn(visual) -> None:
    """ClearCLIP by hand: out_proj(softmax(q q^T / sqrt(d)) v) with no residual and no FFN."""
    x = torch.randn(1, 3, 64, 64)
    enc = DenseClipEncoder(visual, "clearclip")
    tokens = {}
    last = visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda m, a: tokens.setdefault("x", a[0]))
    DenseClipEncoder(visual, "vanilla")(x)
    hook.remove()
    t = last.ln_1(tokens["x"])
    q, _, v = F.linear(t, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, -1)
    h = last.attn.num_heads
    q, v = (z.reshape(1, -1, h, 64 // h).transpose(1, 2) for z in (q, v))
    a = torch.softmax(q @ q.transpose(-1, -2) / (64 // h) ** 0.5, -1) @ v
    out = last.attn.out_proj(a.transpose(1, 2).reshape(1, -1, 64))
    ref = F.normalize(visual.ln_post(out[:, 1:]) @ visual.proj, dim=-1)
    torch.testing.assert_close(enc(x).embeddings.flatten(2).transpose(1, 2), ref)


def test_positional_embedding_interpolation(visual) -> None:
    enc = DenseClipEncoder(visual)
    assert enc.positional_embedding((8, 8)) is visual.positional_embedding
    pos = enc.positional_embedding((5, 13))
    assert pos.shape == (1 + 5 * 13, 64)
    torch.testing.assert_close(pos[0], visual.positional_embedding[0])


def test_naclip_prior_is_a_gaussian_neighbourhood() -> None:
    prior = neighbourhood_prior((4, 5), torch.device("cpu"), torch.float32)
    assert prior.shape == (21, 21)
    assert torch.all(prior[0] == 0) and torch.all(prior[:, 0] == 0)
    assert torch.allclose(prior[1:, 1:].diagonal(), torch.ones(20))
    assert prior[1, 2] > prior[1, 3] > prior[1, 20] > 0


def test_windows_in_the_segmenter_are_the_references_slide(tiny_weights) -> None:
    """With fusion off, the segmenter's windows give what slide_logits (checked against the
    references' fixtures) gives: upsampled window logits averaged, times the logit scale."""
    from ovseg_cli.clip.prompts import Vocabulary
    from ovseg_cli.clip.sliding import slide_logits
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    model = load_model(SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights),
                                     window=32, stride=16, temporal=False, device="cpu"))  # fmt: skip
    x = torch.randn(2, 3, 48, 80)
    text = torch.nn.functional.normalize(torch.randn(3, model.clip.model.text_projection.shape[1]))
    vocab = Vocabulary([], text, ())
    logits, _ = model.step_batch(x, model.init_state(), vocab)
    expected = model.logit_scale * slide_logits(model.encoder, x, text, crop=32, stride=16)
    assert logits[0].shape == (3, 48, 80) and len(model.boxes(48, 80)) == 2 * 4
    torch.testing.assert_close(torch.stack(logits), expected)
    whole, _ = model.step_batch(torch.randn(1, 3, 32, 32), model.init_state(), vocab)
    assert whole[0].shape == (3, 4, 4)  # no larger than a window: one pass, patch logits


@pytest.mark.parametrize(
    ("hw", "short", "expected"),
    [((720, 1280), 224, (224, 400)), ((480, 360), 224, (304, 224)), ((64, 96), 64, (64, 96))],
)
def test_model_input_size(hw, short, expected) -> None:
    assert model_input_size(*hw, short, 16 if short == 224 else 8) == expected


def test_to_model_input_normalises() -> None:
    rgb = np.full((30, 50, 3), 255, np.uint8)
    x = to_model_input(rgb, (16, 24), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (1, 3, 16, 24)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))


def test_frames_prepared_as_uint8_give_the_logits_of_host_normalised_ones(tiny_weights) -> None:
    """Frames go to the model's device as uint8 and are normalised there, bit for bit what
    normalising them on the host (before this moved) gave."""
    from ovseg_cli.clip.prompts import Vocabulary
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.loading import load_model

    model = load_model(SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights), size=64,
                                     device="cpu"))  # fmt: skip
    rgb = np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8)
    prepared = model.prepare(rgb)
    assert prepared.dtype == torch.uint8 and prepared.shape == (1, 3, 64, 88)
    on_host = torch.from_numpy(resize_rgb(rgb, (64, 88))).permute(2, 0, 1).float().div_(255.0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (model.clip.mean, model.clip.std))
    on_host = on_host.sub_(mean).div_(std).unsqueeze(0)
    assert torch.equal(model.normalise(prepared), on_host)
    text = torch.nn.functional.normalize(torch.randn(3, model.clip.model.text_projection.shape[1]))
    vocab = Vocabulary([], text, ())
    a, _ = model.step_batch(prepared, model.init_state(), vocab)
    b, _ = model.step_batch(on_host, model.init_state(), vocab)
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize(("n_in", "n_out"), [(14, 28), (14, 20), (14, 7), (8, 5), (7, 40)])
@pytest.mark.parametrize("plus", [0.0, 0.1])
def test_bicubic_matrix_is_torch_bicubic(n_in: int, n_out: int, plus: float) -> None:
    from ovseg_cli.clip.dense import bicubic_matrix
    from ovseg_cli.clip.dense_methods import POS_SCALE, POS_SIZE

    scale = (n_out + plus) / n_in  # the references' (g + 0.1) / n, or by size
    x = torch.randn(3, n_in, n_in)
    ref = F.interpolate(
        x[None], scale_factor=scale, mode="bicubic", align_corners=False,
        recompute_scale_factor=False,
    )[0]  # fmt: skip
    w = bicubic_matrix(n_in, n_out, POS_SCALE if plus else POS_SIZE)
    assert ref.shape[-1] == n_out
    # aten's float32 coefficients differ by rounding (fused multiply-adds) only
    torch.testing.assert_close(w @ x @ w.T, ref, atol=1e-5, rtol=0)


def test_bicubic_matrix_is_the_identity_at_the_native_size() -> None:
    """The references use the table as it is at the native grid: exactly, not to rounding."""
    from ovseg_cli.clip.dense import bicubic_matrix
    from ovseg_cli.clip.dense_methods import POS_SCALE, POS_SIZE

    for resize in (POS_SCALE, POS_SIZE):
        assert torch.equal(bicubic_matrix(14, 14, resize), torch.eye(14))


def test_positional_embedding_resize_follows_the_method(visual) -> None:
    scaled = DenseClipEncoder(visual, "naclip").positional_embedding((5, 13))
    sized = DenseClipEncoder(visual, "maskclip-original").positional_embedding((5, 13))
    forced = DenseClipEncoder(visual, "naclip", pos_resize="size").positional_embedding((5, 13))
    torch.testing.assert_close(forced, sized)
    assert (scaled - sized).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pos_resize"):
        DenseClipEncoder(visual, "naclip", pos_resize="area")


def test_renamed_method_is_refused_with_the_new_names(visual) -> None:
    from ovseg_cli.config import DENSE_METHOD_NAMES, SegmentConfig, validate
    from ovseg_cli.errors import OvsegError
    from ovseg_cli.model.config import ModelConfig

    assert set(DENSE_METHOD_NAMES) == set(DENSE_METHODS)
    with pytest.raises(ValueError, match=r"'value'.*'maskclip-original'"):
        DenseClipEncoder(visual, "maskclip")
    with pytest.raises(OvsegError, match=r"'value'.*'maskclip-original'") as info:
        validate(SegmentConfig(dense_method="maskclip"))
    assert "\n" not in str(info.value)
    # a checkpoint saved before the rename was trained on the value-only features
    assert ModelConfig(dense_method="maskclip").dense_method == "value"


@pytest.mark.parametrize("method", sorted(DENSE_METHODS))
def test_methods_run_under_autocast(visual, method: str) -> None:
    x = torch.randn(2, 3, 48, 72)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = DenseClipEncoder(visual, method)(x).embeddings
    assert feats.dtype == torch.float32 and feats.shape == (2, 64, 6, 9)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 6, 9))


def test_slide_logits_in_groups_of_windows(visual) -> None:
    from ovseg_cli.clip.sliding import slide_logits

    enc = DenseClipEncoder(visual, "scclip")
    x = torch.randn(2, 3, 64, 144)
    text = F.normalize(torch.randn(5, 64), dim=-1)
    whole = slide_logits(enc, x, text, crop=64, stride=32)
    assert whole.shape == (2, 5, 64, 144)
    torch.testing.assert_close(slide_logits(enc, x, text, 64, 32, windows_per_pass=2), whole)
    # a window alone covers the left 32 columns: its own upsampled logits
    first = torch.einsum("ne,behw->bnhw", text, enc(x[..., :64]).embeddings)
    first = F.interpolate(first, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(whole[..., :32], first[..., :32])
