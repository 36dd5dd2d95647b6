"""Training-free temporal fusion: the paper's incremental idea applied to dense CLIP features.

OV2VSS (III-A, Eq. 3-4) fuses frames gradually: the current frame queries a history
D_past, and the fused result N_t becomes the new history, so earlier work is reused and
the cost per frame does not depend on the video's length. Without training there are
no learnt projections, so here queries, keys and values are the normalised CLIP
embeddings themselves:

    A_t = softmax(F_t D_past^T / tau + P)          (cf. Eq. 4; P: Gaussian locality prior)
    N_t = A_t D_past
    O_t = normalise((1 - lambda) F_t + lambda N_t),  D_past <- push(O_t)

``P`` keeps a patch from matching similar-looking but distant regions (motion between
nearby frames is small). When the frame stops resembling the history (a shot cut), the
history is reset instead of smearing two scenes together.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ovseg_cli.config import SegmentConfig, default_of


@dataclass
class TemporalState:
    """History of fused feature maps in a ring buffer; its size is set by ``capacity`` alone."""

    capacity: int
    history: deque[torch.Tensor] = field(default_factory=deque)
    frames_seen: int = 0
    resets: int = 0

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=self.capacity)

    def reset(self) -> None:
        """Forget the history (new shot, new video)."""
        self.history.clear()

    def push(self, features: torch.Tensor) -> None:
        """Append a fused map; the oldest falls out when the buffer is full."""
        self.history.append(features.detach())

    @property
    def nbytes(self) -> int:
        """Memory held by the history."""
        return sum(t.numel() * t.element_size() for t in self.history)


_prior_cache: dict[tuple[int, int, float, str], torch.Tensor] = {}


def locality_prior(grid: tuple[int, int], sigma: float, device: torch.device) -> torch.Tensor:
    """Log of a Gaussian on patch displacement, (hw, hw): -d^2 / (2 sigma^2)."""
    key = (*grid, sigma, str(device))
    if key not in _prior_cache:
        gh, gw = grid
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
        _prior_cache.clear()  # one grid per video: keep the cache bounded
        _prior_cache[key] = (-torch.cdist(pos, pos).square() / (2 * sigma**2)).to(device)
    return _prior_cache[key]


@dataclass(frozen=True)
class TemporalFusion:
    """Fuses a frame's dense embeddings with a bounded history of fused embeddings."""

    # defaults are SegmentConfig's (the one place they are written)
    strength: float = default_of(SegmentConfig, "temporal_strength")  # lambda: history's weight
    history: int = default_of(SegmentConfig, "temporal_history")  # fused frames kept
    radius: float = default_of(SegmentConfig, "temporal_radius")  # locality prior, in patches
    temperature: float = 0.07  # softmax temperature on cosine similarities (CLIP's own)
    scene_cut: float = default_of(SegmentConfig, "scene_cut")  # reset below this similarity

    @classmethod
    def from_config(cls, cfg: SegmentConfig) -> TemporalFusion:
        """The fusion a ``SegmentConfig`` asks for."""
        return cls(
            strength=cfg.temporal_strength, history=cfg.temporal_history,
            radius=cfg.temporal_radius, scene_cut=cfg.scene_cut,
        )  # fmt: skip

    def init_state(self) -> TemporalState:
        """An empty history."""
        return TemporalState(capacity=self.history)

    def __call__(
        self, feats: torch.Tensor, state: TemporalState
    ) -> tuple[torch.Tensor, TemporalState]:
        """Fuse normalised embeddings (E, gh, gw) with the history; returns (fused, state)."""
        state.frames_seen += 1
        if self.strength == 0:
            return feats, state
        e, gh, gw = feats.shape
        if state.history and state.history[-1].shape != feats.shape:
            state.reset()  # the frame size changed mid-stream
        if not state.history:
            state.push(feats)
            return feats, state
        q = feats.reshape(e, gh * gw).T  # (hw, E)
        keys = torch.stack(list(state.history))  # (M, E, gh, gw)
        m = keys.shape[0]
        kv = keys.reshape(m, e, gh * gw).permute(0, 2, 1).reshape(m * gh * gw, e)
        sim = q @ kv.T  # (hw, M*hw) cosine similarities
        if sim.max(dim=1).values.mean().item() < self.scene_cut:
            state.reset()
            state.resets += 1
            state.push(feats)
            return feats, state
        prior = locality_prior((gh, gw), self.radius, feats.device)
        logits = sim.view(gh * gw, m, gh * gw) / self.temperature + prior[:, None, :]
        attn = torch.softmax(logits.view(gh * gw, m * gh * gw), dim=1)
        fused = F.normalize((1 - self.strength) * q + self.strength * (attn @ kv), dim=-1)
        fused = fused.T.reshape(e, gh, gw)
        state.push(fused)
        return fused, state
