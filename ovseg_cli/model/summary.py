"""What an OV2VSS model costs: parameters and per-module FLOPs of one streaming step."""

from __future__ import annotations

from typing import Any

import torch

from ovseg_cli.classes import ClassSpec
from ovseg_cli.model.ov2vss import parameter_counts
from ovseg_cli.model.streaming import OV2VSSSegmenter

# FlopCounterMode names modules by the outermost module it saw called; map them to the
# paper's sections
_SECTIONS = {
    "FrameEncoder.clip": "CLIP image encoder (frozen)",
    "FrameEncoder.pyramid": "feature pyramid U^l",
    "PyramidPooling": "spatial-temporal fusion (III-A)",
    "SpatialTemporalContextFusion": "spatial-temporal fusion (III-A)",
    "RandomFrameEnhancement": "random frame enhancement (III-B)",
    "TextVideoAttention": "video text encoding (III-C)",
    "CostVolumeDecoder": "video text encoding (III-C)",
}


def step_flops(seg: OV2VSSSegmenter, height: int, width: int, classes: int = 10) -> dict[str, int]:
    """FLOPs of one steady-state streaming step on an (height, width) frame, by section."""
    from torch.utils.flop_counter import FlopCounterMode

    vocab = seg.encode_vocabulary([ClassSpec(f"class {i}") for i in range(classes)])
    state = seg.init_state()
    image = torch.zeros(1, 3, *seg.input_size(height, width), dtype=torch.uint8)
    for _ in range(max(seg.cfg.gaps) + 1):  # fill the history as in mid-video
        seg.step(image, state, vocab)
    with FlopCounterMode(display=False, depth=2) as counter:
        seg.step(image, state, vocab)
    counts = counter.get_flop_counts()
    sections: dict[str, int] = {}
    for module, section in _SECTIONS.items():
        sections[section] = sections.get(section, 0) + sum(counts.get(module, {}).values())
    sections["total"] = sum(counts.get("Global", {}).values())
    return sections


def model_report(seg: OV2VSSSegmenter, height: int = 720, width: int = 1280) -> dict[str, Any]:
    """Parameter counts per module and FLOPs per section for a frame of the given size."""
    return {
        "parameters": parameter_counts(seg.model),
        "input": list(seg.input_size(height, width)),
        "gflops_per_frame": {k: v / 1e9 for k, v in step_flops(seg, height, width).items()},
    }
