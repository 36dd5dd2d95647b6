"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP applies it.

Class scores at image resolution are repeatedly replaced by an average of their dilated
neighbours, weighted by how alike the image's pixels are, so that label borders snap to
image edges. NACLIP's default predict() runs it with 10 iterations and dilations (8, 16)
on the slide logits upsampled to the image (naclip.py:50, 127-132); the maths follows the
pamr.py NACLIP ships (lines 107-134), checked against its output by
tests/test_reference_methods.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PAMR_ITERATIONS = 10  # NACLIP's pamr_steps
PAMR_DILATIONS = (8, 16)  # NACLIP's pamr_stride
# the 8 neighbours in the order of pamr.py's shift kernels (row-major, centre left out)
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_STENCIL = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(
    x: torch.Tensor, dilations: Sequence[int], offsets: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """x (B, C, H, W) seen from each dilated offset, the border replicated (pamr.py:50)."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        pad = F.pad(x, [d] * 4, mode="replicate")
        out += [
            pad[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w] for dy, dx in offsets
        ]
    return out


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """(B, P, H, W) weights of the P = 8 * len(dilations) neighbours of each pixel, summing to 1.

    -|x - x_nb| / (1e-8 + 0.1 std), std the unbiased deviation over the 3x3 dilated stencils
    of all dilations together, averaged over the channels and softmaxed over the neighbours.
    """
    x = image.float()
    std = torch.stack(_shifted(x, dilations, _STENCIL), dim=2).std(dim=2, keepdim=True)
    nb = torch.stack(_shifted(x, dilations, _NEIGHBOURS), dim=2)
    aff = -(x.unsqueeze(2) - nb).abs() / (1e-8 + 0.1 * std)
    return torch.softmax(aff.mean(dim=1), dim=1)


def pamr(
    image: torch.Tensor,
    scores: torch.Tensor,
    num_iter: int = PAMR_ITERATIONS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> torch.Tensor:
    """Refined class scores (B, N, H, W), float32, of scores (B, N, h, w) on images (B, 3, H, W).

    Scores of another size are first resized as PAMR does it (bilinear, align_corners=True);
    NACLIP instead upsamples its logits to the image with align_corners=False before calling
    PAMR, and the results differ: resize first for NACLIP's output.
    """
    scores = scores.float()
    if scores.shape[-2:] != image.shape[-2:]:
        scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    aff = pamr_affinity(image, dilations)
    weights = [aff[:, i : i + 1] for i in range(aff.shape[1])]
    for _ in range(num_iter):
        # one neighbour at a time: never holds P copies of the N score maps
        terms = _shifted(scores, dilations, _NEIGHBOURS)
        refined = weights[0] * terms[0]
        for wgt, term in zip(weights[1:], terms[1:], strict=True):
            refined = refined + wgt * term
        scores = refined
    return scores
