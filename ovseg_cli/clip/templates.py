"""Prompt-template sets by name (no torch here: the CLI lists the names in its help).

A class name is put into every template of a set and the text embeddings are averaged
(``ovseg_cli.clip.prompts``), as ZegFormer and CAT-Seg do.
"""

from __future__ import annotations

from collections.abc import Callable

# ViLD's templates, the set CAT-Seg uses for open-vocabulary segmentation
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def _imagenet() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


# name -> the templates (built on first use: open_clip's list needs torch)
TEMPLATE_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "vild": lambda: VILD_TEMPLATES,  # 14
    "imagenet": _imagenet,  # OpenAI's 80, what the training-free methods' papers used
    "single": lambda: ("a photo of a {}.",),
}


def templates_named(name: str) -> tuple[str, ...]:
    """A template set by name (one of TEMPLATE_SETS)."""
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set {name!r}")
    return TEMPLATE_SETS[name]()
