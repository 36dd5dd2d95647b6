"""Template ensembles and synonym averaging of class text embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovseg_cli.classes import ClassSpec
from ovseg_cli.clip.loading import load_clip
from ovseg_cli.clip.prompts import encode_texts, encode_vocabulary
from ovseg_cli.clip.templates import VILD_TEMPLATES, templates_named


def test_template_sets() -> None:
    assert len(templates_named("vild")) == 14 == len(VILD_TEMPLATES)
    assert len(templates_named("imagenet")) == 80
    assert all("{}" in t for t in templates_named("imagenet"))
    assert templates_named("single") == ("a photo of a {}.",)


def test_ensemble_is_the_normalised_mean_of_normalised_embeddings() -> None:
    torch.manual_seed(0)
    clip = load_clip("ovseg-tiny", "none")
    templates = ("a photo of a {}.", "there is a {} here")
    vocab = encode_vocabulary(
        clip, [ClassSpec("dog"), ClassSpec("person", ("person", "rider"))], templates
    )
    assert vocab.names == ["dog", "person"] and vocab.embeddings.shape == (2, 64)

    def ensemble(word: str) -> torch.Tensor:
        e = encode_texts(clip, [t.format(word) for t in templates])
        return F.normalize(e.mean(0), dim=-1)

    torch.testing.assert_close(vocab.embeddings[0], ensemble("dog"))
    person = F.normalize((ensemble("person") + ensemble("rider")) / 2, dim=-1)
    torch.testing.assert_close(vocab.embeddings[1], person)
    torch.testing.assert_close(vocab.embeddings.norm(dim=1), torch.ones(2))
    single = encode_texts(clip, ["a photo of a dog."])[0]
    assert not torch.allclose(vocab.embeddings[0], single)  # the ensemble is not one template
