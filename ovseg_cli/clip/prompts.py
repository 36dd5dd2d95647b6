"""Class names to CLIP text embeddings with a prompt-template ensemble.

As in ZegFormer and CAT-Seg (and the paper, IV-B), each class name is put into many
templates; the normalised text embeddings are averaged and normalised again. A class
with several prompts (synonyms) averages those prompts' ensembles the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ovseg_cli.classes import RGB, ClassSpec, colors_for
from ovseg_cli.clip.loading import ClipBundle
from ovseg_cli.clip.templates import VILD_TEMPLATES


@dataclass
class Vocabulary:
    """The classes of a run with their text embeddings, computed once."""

    classes: list[ClassSpec]
    embeddings: torch.Tensor  # (N, E), L2-normalised
    templates: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return [c.name for c in self.classes]

    @property
    def colors(self) -> list[RGB]:
        """Class colours in index order."""
        return colors_for(self.classes)

    def __len__(self) -> int:
        return len(self.classes)


@torch.no_grad()
def encode_texts(clip: ClipBundle, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (len(texts), E)."""
    device = next(clip.model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        tokens = clip.tokenizer(list(texts[i : i + batch])).to(device)
        out.append(F.normalize(clip.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def encode_vocabulary(
    clip: ClipBundle, classes: Sequence[ClassSpec], templates: Sequence[str] = VILD_TEMPLATES
) -> Vocabulary:
    """Embed every class: mean over templates per prompt, then mean over the class's prompts."""
    texts = [t.format(p) for c in classes for p in c.texts for t in templates]
    emb = encode_texts(clip, texts)
    n_t = len(templates)
    rows, i = [], 0
    for c in classes:
        per_prompt = emb[i : i + n_t * len(c.texts)].view(len(c.texts), n_t, -1)
        i += n_t * len(c.texts)
        prompt_emb = F.normalize(per_prompt.mean(dim=1), dim=-1)
        rows.append(F.normalize(prompt_emb.mean(dim=0), dim=-1))
    return Vocabulary(
        classes=list(classes), embeddings=torch.stack(rows), templates=tuple(templates)
    )
