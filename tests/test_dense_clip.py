"""Training-free dense CLIP: shapes, equivalence with open_clip, interpolation, windows."""

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


def test_sliding_window_covers_the_image(visual) -> None:
    enc = DenseClipEncoder(visual)
    x = torch.randn(1, 3, 64, 200)
    whole = enc.encode(x)
    slid = enc.encode(x, window=64)
    assert slid.shape == whole.shape == (1, 64, 8, 25)
    torch.testing.assert_close(slid.norm(dim=1), torch.ones(1, 8, 25))
    small = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(enc.encode(small, window=64), enc.encode(small))
    # the first window's left columns are seen by that window alone
    torch.testing.assert_close(slid[..., :2], enc(x[..., :64]).embeddings[..., :2])


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
