"""What a segmenter is: the interface the stream runs, and nothing that implements it.

A segmenter turns prepared frames into class scores, one step at a time, carrying a state
it does not own: ``step(image, state, vocabulary) -> (logits, state)``. The stream
(``ovseg_cli.segment.stream``) runs any segmenter the same way; two satisfy the interface
structurally: the training-free one (``ovseg_cli.segment.training_free``) and the trained
OV2VSS model (``ovseg_cli.model.streaming``). ``ovseg_cli.segment.loading.load_model``
builds one from the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ovseg_cli.classes import ClassSpec
    from ovseg_cli.clip.loading import ClipBundle
    from ovseg_cli.clip.prompts import Vocabulary

DEFAULT_CLIP = "ViT-B-16"  # the paper's text encoder
DEFAULT_PRETRAINED = "openai"


@runtime_checkable
class StreamState(Protocol):
    """What a stream carries between frames; its size is fixed by the settings."""

    def reset(self) -> None:
        """Start afresh (a new video or a new shot)."""
        ...

    @property
    def nbytes(self) -> int:
        """Memory held by the state."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Frames in, class scores out, one step at a time, with the state passed in and out."""

    kind: str  # "training-free" or "ov2vss", for meta.json
    device: torch.device
    clip: ClipBundle

    def encode_vocabulary(self, classes: Sequence[ClassSpec]) -> Vocabulary:
        """Text embeddings of the classes (once per run): where text meets the image."""
        ...

    def input_size(self, height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
        """The (h, w) a frame of this size is resized to."""
        ...

    def prepare(self, rgb: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """An (H, W, 3) uint8 frame resized to the model's (1, 3, h, w) uint8 input; safe in
        reader threads (several at once). Scaling to floats happens on the model's device."""
        ...

    def init_state(self) -> StreamState:
        """A fresh, empty state."""
        ...

    def step(
        self, image: torch.Tensor, state: Any, vocabulary: Vocabulary
    ) -> tuple[torch.Tensor, Any]:
        """Class logits (N, gh, gw) of one prepared frame, and the updated state."""
        ...

    def step_batch(
        self, images: torch.Tensor, state: Any, vocabulary: Vocabulary
    ) -> tuple[list[torch.Tensor], Any]:
        """``step`` for consecutive frames (B, 3, h, w), as the frames one by one would."""
        ...

    def memory_estimate(
        self, height: int, width: int, batch: int, classes: int, short_side: int | None = None
    ) -> int:
        """Bytes one step on ``batch`` frames of this size needs at most."""
        ...

    def describe(self) -> dict[str, Any]:
        """What produces the results, for meta.json and report.json."""
        ...


class StepsInBatches:
    """``step`` as a batch of one, for segmenters that implement ``step_batch``."""

    def step(self, image: torch.Tensor, state: Any, vocabulary: Vocabulary) -> tuple[Any, Any]:
        """Class logits of one prepared frame (1, 3, h, w), and the updated state."""
        logits, state = self.step_batch(image, state, vocabulary)  # type: ignore[attr-defined]
        return logits[0], state
