"""OV2VSS modules: shapes, any number of classes, class weight sharing, frozen CLIP, loss."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from ovseg_cli.clip.loading import load_clip
from ovseg_cli.clip.prompts import encode_texts
from ovseg_cli.model.backbone import default_clip_layers
from ovseg_cli.model.ov2vss import OV2VSS, parameter_counts, segmentation_loss
from ovseg_cli.model.random_frame_enhancement import RandomFrameEnhancement
from ovseg_cli.model.spatial_temporal_fusion import PyramidPooling, SpatialTemporalContextFusion
from ovseg_cli.model.video_text_encoding import CostVolumeDecoder, TextVideoAttention


@pytest.fixture(scope="module")
def clip():
    return load_clip("ovseg-tiny", "none")


@pytest.fixture(scope="module")
def model(clip):
    torch.manual_seed(0)
    return OV2VSS(tiny_model_config(), clip).eval()


def _clip_inputs(b: int = 2, h: int = 64, w: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, 4, 3, h, w), dtype=torch.uint8, generator=g)
    distant = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    return frames, distant


def test_pyramid_pooling_gives_n_tokens_whatever_the_size() -> None:
    pool = PyramidPooling(8, (1, 3, 6))
    for h, w in [(4, 4), (12, 20), (31, 7)]:
        assert pool(torch.randn(2, 8, h, w)).shape == (2, 1 + 9 + 36, 8)


def test_fusion_modules_shapes() -> None:
    stcf = SpatialTemporalContextFusion(8, 3, (1, 2), embed_dim=12)
    pyr = [torch.randn(2, 8, 16 // s, 24 // s) for s in (1, 2, 4)]
    first = [pool(u) for pool, u in zip(stcf.pooling, pyr, strict=True)]
    o = stcf(pyr, [pyr, pyr], first)
    assert o.shape == (2, 8, 16, 24)
    assert stcf.aux_head(o, torch.randn(7, 12)).shape == (2, 7, 16, 24)
    rfe = RandomFrameEnhancement(8, 3, regions=5)
    assert rfe.regions(first).shape == (2, 5, 8)
    assert rfe(o, first).shape == o.shape


def test_text_modules_work_for_any_class_count() -> None:
    vte = TextVideoAttention(12, heads=2)
    dec = CostVolumeDecoder(8, cost_dim=4, guidance_dim=4, prior_scale=10.0)
    video = [torch.nn.functional.normalize(torch.randn(2, 12, 4, 6), dim=1) for _ in range(4)]
    for n in (1, 3, 17):
        refined = vte(torch.randn(n, 12), video)
        assert refined.shape == (2, n, 12)
        logits = dec(refined, video[-1], torch.randn(2, 8, 8, 12), torch.randn(2, 8, 8, 12))
        assert logits.shape == (2, n, 8, 12)


@pytest.mark.parametrize("n", [2, 5, 40])
def test_model_runs_with_any_number_of_class_names(model, clip, n: int) -> None:
    text = encode_texts(clip, [f"thing number {i}" for i in range(n)])
    frames, distant = _clip_inputs()
    with torch.no_grad():
        out = model(frames, distant, text)
    assert out.logits.shape == out.aux.shape == (2, n, 8, 12)  # stride 8 of 64x96
    assert torch.isfinite(out.logits).all()


def test_class_weights_are_shared_so_order_does_not_matter(model, clip) -> None:
    text = encode_texts(clip, ["road", "sky", "tree", "car"])
    perm = torch.tensor([2, 0, 3, 1])
    frames, distant = _clip_inputs(b=1)
    with torch.no_grad():
        a = model(frames, distant, text)
        b = model(frames, distant, text[perm])
    torch.testing.assert_close(b.logits, a.logits[:, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.aux, a.aux[:, perm], atol=1e-4, rtol=1e-4)


def test_gradients_reach_only_the_new_modules(clip) -> None:
    model = OV2VSS(tiny_model_config(), clip).train()
    assert not model.encoder.clip.training  # CLIP stays in eval mode
    text = encode_texts(clip, ["a", "b", "c"])
    frames, distant = _clip_inputs(b=1)
    labels = torch.randint(0, 3, (1, 64, 96))
    segmentation_loss(model(frames, distant, text), labels)["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)
    assert all(not n.startswith("encoder.clip.") for n, _ in trainable)
    assert all(p.grad is None for p in clip.model.parameters())
    counts = parameter_counts(model)
    assert counts["clip (frozen)"]["trainable"] == 0 and counts["stcf"]["trainable"] > 0


def test_loss_is_eq15_with_ignore(model, clip) -> None:
    text = encode_texts(clip, ["a", "b"])
    frames, distant = _clip_inputs(b=1)
    with torch.no_grad():
        out = model(frames, distant, text)
    labels = torch.full((1, 64, 96), 255)
    labels[:, :10, :10] = 1
    l1 = segmentation_loss(out, labels, alpha=1.0, beta=1.0)
    l2 = segmentation_loss(out, labels, alpha=2.0, beta=0.5)
    torch.testing.assert_close(l2["loss"], 2 * l1["main"] + 0.5 * l1["aux"])
    changed = labels.clone()
    changed[:, 30:, 30:] = 255  # already ignored pixels do not change the loss
    torch.testing.assert_close(segmentation_loss(out, changed)["main"], l1["main"])


def test_default_clip_layers() -> None:
    assert default_clip_layers(12, 3) == (3, 7, 10)
    assert default_clip_layers(3, 3) == (0, 1, 1)


def test_timm_backbone(clip) -> None:
    cfg = tiny_model_config(backbone="resnet18", backbone_pretrained=False)
    model = OV2VSS(cfg, clip).train()
    assert not any(m.training for m in model.encoder.pyramid.net.modules())  # BN frozen
    text = encode_texts(clip, ["a", "b"])
    frames, distant = _clip_inputs(b=1)
    out = model(frames, distant, text)
    assert out.logits.shape == (1, 2, 8, 12)
    out.logits.sum().backward()
    assert model.encoder.pyramid.net.conv1.weight.grad is not None


def test_a_batch_equals_its_clips_one_by_one(model, clip) -> None:
    """Clips in a batch never mix: each item's logits are those of the clip alone."""
    text = encode_texts(clip, ["a", "b", "c"])
    frames, distant = _clip_inputs(b=3, seed=4)
    with torch.no_grad():
        batched = model(frames, distant, text).logits
        alone = torch.cat(
            [model(frames[i : i + 1], distant[i : i + 1], text).logits for i in range(3)]
        )
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
