"""The training-free dense methods by name: what each is and where it comes from.

No torch here: the CLI lists the names in its help and the config checks choices against
them. ``ovseg_cli.clip.dense`` registers one implementation per name and refuses names
that are not listed here, so this table and the code cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DenseMethodInfo:
    """One training-free change to CLIP's last block."""

    summary: str
    paper: str


DENSE_METHOD_INFO: dict[str, DenseMethodInfo] = {
    "clearclip": DenseMethodInfo(
        "q-q attention, no residual, no FFN", "Lan et al., ClearCLIP, ECCV 2024"
    ),
    "naclip": DenseMethodInfo(
        "k-k attention with a Gaussian neighbourhood prior, no residual, no FFN",
        "Hajimiri et al., NACLIP, WACV 2025",
    ),
    "sclip": DenseMethodInfo(
        "correlative self-attention q-q + k-k, residual and FFN kept",
        "Wang et al., SCLIP, ECCV 2024",
    ),
    "maskclip": DenseMethodInfo(
        "value embeddings only, no query-key mixing", "Zhou et al., MaskCLIP, ECCV 2022"
    ),
    "vanilla": DenseMethodInfo("CLIP's own last block (a baseline)", "Radford et al., CLIP"),
}

DENSE_METHOD_NAMES = tuple(DENSE_METHOD_INFO)
