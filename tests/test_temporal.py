"""Training-free temporal fusion: bounded state, incremental reuse, scene cuts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovseg_cli.classes import parse_classes
from ovseg_cli.segment.temporal_fusion import TemporalFusion, TemporalState


def _feats(seed: int, shape=(32, 6, 10)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=0)


def test_state_is_a_bounded_ring_buffer() -> None:
    fusion = TemporalFusion(history=3)
    state = fusion.init_state()
    base = _feats(0)
    sizes = []
    for i in range(50):
        noisy = F.normalize(base + 0.05 * _feats(i + 1), dim=0)
        _, state = fusion(noisy, state)
        sizes.append(state.nbytes)
    assert len(state.history) == 3 and state.frames_seen == 50
    assert sizes[2] == sizes[-1] == 3 * base.numel() * 4
    state.reset()
    assert not state.history and state.nbytes == 0


def test_first_frame_and_identical_frames_pass_through() -> None:
    fusion = TemporalFusion(strength=0.5)
    state = fusion.init_state()
    f = _feats(1)
    out, state = fusion(f, state)
    torch.testing.assert_close(out, f)
    out, state = fusion(f, state)  # the same frame again: attention finds itself
    assert F.cosine_similarity(out, f, dim=0).min() > 0.95


def test_fusion_pulls_a_noisy_frame_towards_its_history() -> None:
    clean = _feats(2)
    fusion = TemporalFusion(strength=0.6, history=2, temperature=0.05)
    state = fusion.init_state()
    for _ in range(2):
        _, state = fusion(clean, state)
    noisy = F.normalize(clean + 0.6 * _feats(3), dim=0)
    fused, state = fusion(noisy, state)
    before = F.cosine_similarity(noisy, clean, dim=0).mean()
    after = F.cosine_similarity(fused, clean, dim=0).mean()
    assert after > before + 0.05
    assert state.history[-1] is fused or torch.equal(state.history[-1], fused)  # D_past <- N_t


def test_locality_prior_prefers_nearby_matches() -> None:
    """A frame shifted by one patch is matched to its own content, not to a far look-alike."""
    base = _feats(4, (16, 8, 8))
    shifted = torch.roll(base, shifts=1, dims=2)
    fusion = TemporalFusion(strength=1.0, radius=1.5, temperature=0.02)
    state = fusion.init_state()
    _, state = fusion(base, state)
    fused, _ = fusion(shifted, state)
    # interior columns: the fused (history-only) features should be the shifted content
    assert F.cosine_similarity(fused[..., 2:-2], shifted[..., 2:-2], dim=0).mean() > 0.9


def test_scene_cut_resets_the_history() -> None:
    fusion = TemporalFusion(scene_cut=0.5)
    state = fusion.init_state()
    for _ in range(3):
        _, state = fusion(_feats(5), state)
    other = _feats(6)
    out, state = fusion(other, state)
    torch.testing.assert_close(out, other)
    assert state.resets == 1 and len(state.history) == 1


def test_frame_size_change_resets() -> None:
    fusion = TemporalFusion()
    state = fusion.init_state()
    _, state = fusion(_feats(7), state)
    out, state = fusion(_feats(8, (32, 4, 4)), state)
    assert out.shape == (32, 4, 4) and len(state.history) == 1


def test_segmenter_state_does_not_grow_with_video_length(tiny_model) -> None:
    vocab = tiny_model.encode_vocabulary(parse_classes("road,sky,tree"))
    state = tiny_model.init_state()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    sizes = []
    for i in range(40):
        frame = np.roll(base, i, axis=1)
        logits, state = tiny_model.step(tiny_model.prepare(frame), state, vocab)
        sizes.append(state.nbytes)
    assert logits.shape == (3, 8, 13)  # 48x80 seen at 64x104
    assert state.frames == 40
    assert sizes[5] == sizes[-1] > 0
    assert len(state.temporal) == 1 and isinstance(state.temporal[0], TemporalState)
    assert len(state.temporal[0].history) == tiny_model.fusion.history  # one whole-frame pass
