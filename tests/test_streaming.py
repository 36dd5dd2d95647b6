"""Streaming computes what training computes, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from ovseg_cli.classes import parse_classes
from ovseg_cli.clip.loading import load_clip
from ovseg_cli.model.ov2vss import OV2VSS
from ovseg_cli.model.streaming import OV2VSSSegmenter


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(1)
    clip = load_clip("ovseg-tiny", "none")
    return OV2VSSSegmenter(OV2VSS(tiny_model_config(), clip), clip)


def _video(n: int, seed: int = 0) -> list[torch.Tensor]:
    """n correlated random frames (1, 3, 64, 96) uint8: a drifting texture."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (64, 3 * n + 96, 3), dtype=np.uint8)
    return [
        torch.from_numpy(base[:, 3 * i : 3 * i + 96].copy()).permute(2, 0, 1)[None]
        for i in range(n)
    ]


@pytest.mark.parametrize("t", [0, 4, 13])
def test_streaming_logits_equal_the_training_clip_forward(segmenter, t: int) -> None:
    frames = _video(14)
    vocab = segmenter.encode_vocabulary(parse_classes("road,sky,tree"))
    state = segmenter.init_state()
    for i in range(t + 1):
        logits, state = segmenter.step(frames[i], state, vocab)
    idx = [max(t - k, 0) for k in segmenter.cfg.gaps] + [t]  # (t-9, t-6, t-3, t), start repeated
    clip = torch.stack([frames[i][0] for i in idx])[None]
    with torch.no_grad():
        ref = segmenter.model(clip, frames[0], vocab.embeddings).logits[0]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_state_memory_is_flat(segmenter) -> None:
    frames = _video(40)
    vocab = segmenter.encode_vocabulary(parse_classes("a,b"))
    state = segmenter.init_state()
    sizes = []
    for f in frames:
        _, state = segmenter.step(f, state, vocab)
        sizes.append(state.nbytes)
    assert len(state.frames) == max(segmenter.cfg.gaps) + 1 == 10
    assert sizes[15] == sizes[-1]
    assert state.count == 40
    state.reset()
    assert state.nbytes == 0 and state.distant is None


def test_the_first_frame_is_the_distant_frame(segmenter) -> None:
    frames = _video(5)
    vocab = segmenter.encode_vocabulary(parse_classes("a,b"))
    state = segmenter.init_state()
    for f in frames:
        _, state = segmenter.step(f, state, vocab)
    first = segmenter.model.encode_frame(frames[0])
    torch.testing.assert_close(state.distant.clip, first.clip)
