"""Run configuration: one dataclass per command, each setting declared once.

Each setting has its default and help text here (``setting``), with its choices and limits;
the CLI takes its help from here, and ``ovseg_cli.config_io`` reads YAML files and
command-line overrides against these declarations (unknown keys refused with a suggestion)
and writes the resolved values that every run keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ovseg_cli.clip.methods import DENSE_METHOD_NAMES
from ovseg_cli.clip.templates import TEMPLATE_SETS
from ovseg_cli.datasets.index import SPLITS
from ovseg_cli.errors import OvsegError, did_you_mean

PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # auto: bf16/fp16 autocast on GPUs, fp32 on CPUs
TEMPLATES = tuple(TEMPLATE_SETS)
CLASS_SPLITS = ("unseen", "seen", "all")  # which classes an evaluation gives the model (IV-C)
REFINEMENTS = ("none", "pamr")  # what may refine class scores before the best class is taken
RUNTIMES = ("auto", "torch", "onnx")  # where CLIP's image encoder runs (ovseg_cli.runtime)
AUTO = "auto"  # keyframe_interval: keyframes chosen by how well the warp still matches
# setting values that changed meaning: refused with the new names, never silently rerouted
RENAMED_CHOICES = {
    ("dense_method", "maskclip"): (
        "dense_method 'maskclip' was split: 'value' is what ovseg ran under that name "
        "(ClearCLIP's MaskCLIP mode: out_proj(v), no residual, no FFN), 'maskclip-original' "
        "is MaskCLIP as its authors' code runs it"
    ),
}


# Upper limits of the settings that scale memory (the estimate in memory.py decides within)
MAX_SIDE = 4096  # --size, --window, --flow-size, eval --size: pixels
MAX_BATCH = 256  # --batch: keyframes per encoder pass
MAX_INTERVAL = 1000  # --keyframe-interval, --max-interval: frames held between keyframes
MAX_HISTORY = 64  # --temporal-history: fused frames kept
MAX_VC = 256  # eval --vc: frames of a consistency window
MAX_GAP = 100_000  # propagate --max-gap: frames


def setting(
    default: Any, help: str | Callable[[], str], *, choices: tuple[str, ...] | None = None
) -> Any:
    """Declare a config field with its default, one-line help and optional choices.

    ``help`` may be a function, for a setting whose registry describes it (read on first use).
    """
    return field(default=default, metadata={"help": help, "choices": choices})


def help_text(cls: type, name: str) -> str:
    """Help text of a setting (with its choices), for the CLI."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    choices = f.metadata.get("choices")
    text = f.metadata["help"]
    text = text() if callable(text) else text
    return text + (f" One of: {', '.join(choices)}." if choices else "")


def default_of(cls: type, name: str) -> Any:
    """A setting's default, for code that must agree with it (the one place it is written)."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def default_text(cls: type, name: str) -> str:
    """A setting's default as the CLI shows it."""
    default = default_of(cls, name)
    if default is None:
        return "none"
    return str(default).lower() if isinstance(default, bool) else str(default)


@dataclass
class SegmentConfig:
    """Settings of `ovseg segment` (and of `segment_video` in the library)."""

    clip: str | None = setting(
        None,
        "CLIP architecture: an open_clip name, or hf-hub:ORG/NAME "
        "(default: ViT-B-16, or the checkpoint's).",
    )
    pretrained: str | None = setting(
        None,
        "CLIP weights: an open_clip tag, a local file or folder, hf-hub:ORG/NAME, or 'none' for "
        "random weights, for tests and benchmarks (default: openai, or the checkpoint's).",
    )
    checkpoint: str | None = setting(
        None,
        "Trained OV2VSS checkpoint (NAME.safetensors with NAME.json); without one, "
        "segmentation is training-free.",
    )
    dense_method: str = setting(
        "scclip",
        "Training-free method that makes CLIP's patch features dense (the default: the best "
        "published, see the README; a checkpoint uses its own).",
        choices=DENSE_METHOD_NAMES,
    )
    size: int | None = setting(
        None,
        "Short side in pixels of the image the model sees (default: 1.5 times the CLIP's "
        "native size, 336 for ViT-B-16, chosen by the resolution table in the README; or the "
        "checkpoint's).",
    )
    window: int | None = setting(
        None,
        "Sliding windows of N px, their logits upsampled and averaged as the training-free "
        "references do (their evaluations: 224); none: one pass over the whole frame.",
    )
    stride: int | None = setting(
        None, "Step between sliding windows in px (default: half the window, as the references)."
    )
    refine: str = setting(
        "none",
        "Refine the class scores before the best class is taken: pamr (pixel-adaptive mask "
        "refinement on the frame, as NACLIP's default; costs time per frame).",
        choices=REFINEMENTS,
    )
    templates: str = setting(
        "imagenet",
        "Prompt-template ensemble (imagenet: OpenAI's 80, what the training-free methods were "
        "evaluated with; vild: 14; single: 1).",
        choices=TEMPLATES,
    )
    temporal: bool = setting(True, "Fuse each frame's features with a bounded history.")
    temporal_strength: float = setting(
        0.5, "Weight of the history in the fused features (0 = off, 1 = history only)."
    )
    temporal_history: int = setting(2, "Fused frames kept in the temporal history.")
    temporal_radius: float = setting(
        3.0, "Spatial reach of the temporal attention, in patches (Gaussian sigma)."
    )
    scene_cut: float = setting(
        0.5, "Reset the history when frame-to-history feature similarity drops below this."
    )
    shot_threshold: float = setting(
        30.0,
        "Mean HSV difference (0-255) of consecutive frames' thumbnails above which a new shot "
        "starts: the temporal state is reset and the frame is a keyframe (0: never).",
    )
    overlay: bool = setting(True, "Write overlay.mp4.")
    masks: bool = setting(False, "Write masks/NNNNNN.png palette masks and labelmap.txt.")
    export: tuple[str, ...] | None = setting(
        None, lambda: f"Annotation-tool exports, comma-separated: {_exports_help()}."
    )
    background: str | None = setting(
        None,
        "Add a catch-all class with this name (last index); 'NAME: #rrggbb, prompt, ...' "
        "sets its colour and prompts.",
    )
    threshold: float | None = setting(
        None,
        "Leave pixels unlabelled (255, transparent, not exported) when their best class "
        "probability (softmax over the classes) is below this.",
    )
    alpha: float = setting(0.5, "Opacity of the class colours in the overlay.")
    start: float = setting(0.0, "Start of the range to segment, in seconds.")
    end: float | None = setting(None, "End of the range to segment, in seconds (exclusive).")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.")
    precision: str = setting("auto", "Compute precision (autocast on GPU).", choices=PRECISIONS)
    runtime: str = setting(
        "auto",
        "Where CLIP's image encoder runs: torch, or onnx (ONNX Runtime, CPU, fp32; exported "
        "once per model into the cache folder; pip install 'ovseg[onnx]'); auto: onnx on a "
        "CPU when ONNX Runtime is installed, else torch.",
        choices=RUNTIMES,
    )
    batch: int | None = setting(
        None, "Keyframes per image-encoder pass (default: 8 on CUDA, 1 otherwise)."
    )
    keyframe_interval: int | str = setting(
        1,
        "Run the model on every Nth frame only (a keyframe) and carry its class scores to the "
        "frames in between with optical flow; 'auto': a keyframe when the warped keyframe stops "
        "matching the frame (a cut, fast motion), at the latest every max_interval frames.",
    )
    max_interval: int = setting(
        8, "With keyframe_interval auto: the most frames from one keyframe to the next."
    )
    keyframe_error: float = setting(
        0.1,
        "With keyframe_interval auto: start a keyframe when this share of the frame is "
        "mispredicted by the warped keyframe (grey levels off by more than 30).",
    )
    bidirectional: bool = setting(
        False,
        "Blend the warps of the previous and the next keyframe (output waits for the next "
        "keyframe: at most keyframe_interval frames are held).",
    )
    flow_preset: str = setting(
        "fast", "DIS optical-flow preset.", choices=("ultrafast", "fast", "medium")
    )
    flow_size: int = setting(
        240, "Short side in pixels at which optical flow is computed (never above the frame's)."
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class EvalConfig:
    """Settings of `ovseg eval` (and of validation during training)."""

    split: str = setting("unseen", "Classes to evaluate (IV-C).", choices=CLASS_SPLITS)
    data_split: str = setting("val", "Videos to evaluate.", choices=SPLITS)
    limit_videos: int | None = setting(None, "Evaluate only the first N videos.")
    vc: tuple[int, ...] = setting((8, 16), "Window sizes of the temporal consistency VC_n.")
    size: int | None = setting(
        None, "Short side the model sees (default: each frame's original size, as in IV-B)."
    )
    classes_file: str | None = setting(
        None, "Prompts for the dataset's class names ('name: prompt, prompt' lines)."
    )
    examples: int = setting(4, "Qualitative images (frame | prediction | ground truth) to save.")
    unlabelled: bool = setting(
        True,
        "Run the unlabelled frames too, as temporal context (IV-B); off: the labelled frames "
        "alone, as image methods are evaluated (Cityscapes sequences: 30 times fewer frames).",
    )
    masks: bool = setting(
        False,
        "Save each labelled frame's predicted mask as masks/<video>/<frame>.png (palette PNG, "
        "pixel value = index among the evaluated classes, 255 = unlabelled).",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.limit_videos is not None and self.limit_videos < 1:
            raise OvsegError(f"limit_videos must be at least 1, not {self.limit_videos}")
        _check_range("size", self.size, 16, MAX_SIDE, " pixels")
        for n in self.vc:
            _check_range("each vc window", n, 2, MAX_VC, " frames")
        if self.examples < 0:
            raise OvsegError(f"examples must be >= 0, not {self.examples}")


FILLS = ("none", "model")  # what labels the frames no labelled frame reaches


def _as_in(cls: type, name: str) -> Any:
    """The same setting (default, help, choices) as ``cls`` declares it, for another command."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field(default=f.default, metadata=f.metadata)


@dataclass
class PropagateConfig:
    """Settings of `ovseg propagate` (and of `propagate_video` in the library)."""

    empty_frames: bool = setting(
        False,
        "Count a frame whose labels are all unlabelled (a frame nobody annotated, all black "
        "in a CVAT export, without annotations in COCO) as a labelled frame.",
    )
    bidirectional: bool = setting(
        True,
        "Blend the labels of the labelled frames before and after each frame (off: the "
        "previous one only, and the next one before the first).",
    )
    max_gap: int | None = setting(
        None,
        "Carry labels at most N frames from a labelled frame; frames farther away stay "
        "unlabelled, or are segmented by the model with --fill model.",
    )
    fill: str = setting(
        "none",
        "What labels the frames no labelled frame reaches (another shot, beyond --max-gap): "
        "none (unlabelled, 255) or model (segmented with the labels' class names as prompts; "
        "needs CLIP weights, see segment's model options).",
        choices=FILLS,
    )
    flow_preset: str = setting(
        "ultrafast",
        "DIS optical-flow preset (refined one pyramid level finer than the preset's own).",
        choices=("ultrafast", "fast", "medium"),
    )
    flow_size: int | None = setting(
        None,
        "Short side in pixels at which optical flow is computed (none: the frame's own).",
    )
    shot_threshold: float = _as_in(SegmentConfig, "shot_threshold")
    overlay: bool = _as_in(SegmentConfig, "overlay")
    masks: bool = _as_in(SegmentConfig, "masks")
    export: tuple[str, ...] | None = _as_in(SegmentConfig, "export")
    alpha: float = _as_in(SegmentConfig, "alpha")

    def __post_init__(self) -> None:
        validate(self)
        if not 0.0 <= self.alpha <= 1.0:
            raise OvsegError(f"alpha must be between 0 and 1, not {self.alpha}")
        if not 0.0 <= self.shot_threshold <= 255.0:
            raise OvsegError(f"shot_threshold must be between 0 and 255, not {self.shot_threshold}")
        _check_range("max_gap", self.max_gap, 1, MAX_GAP, " frames")
        _check_range("flow_size", self.flow_size, 16, MAX_SIDE, " pixels")
        if self.export is not None:
            from ovseg_cli.exports import parse_exports

            self.export = tuple(parse_exports(self.export)) or None


def _exports_help() -> str:
    from ovseg_cli.exports import describe_exporters

    return describe_exporters()


def validate(cfg: Any) -> None:
    """Check choices and simple ranges of a config dataclass, raising OvsegError."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if isinstance(value, str) and (f.name, value) in RENAMED_CHOICES:
            raise OvsegError(RENAMED_CHOICES[f.name, value])
        if choices and value not in choices:
            raise OvsegError(
                f"{f.name} must be one of {', '.join(choices)}, not {value!r}"
                + did_you_mean(str(value), choices)
            )
    if isinstance(cfg, SegmentConfig):
        _check_segment(cfg)


def _check_segment(cfg: SegmentConfig) -> None:
    if not 0.0 <= cfg.alpha <= 1.0:
        raise OvsegError(f"alpha must be between 0 and 1, not {cfg.alpha}")
    if not 0.0 <= cfg.temporal_strength <= 1.0:
        raise OvsegError(f"temporal_strength must be between 0 and 1, not {cfg.temporal_strength}")
    _check_range("temporal_history", cfg.temporal_history, 1, MAX_HISTORY)
    if cfg.temporal_radius <= 0:
        raise OvsegError(f"temporal_radius must be positive, not {cfg.temporal_radius}")
    if not 0.0 <= cfg.shot_threshold <= 255.0:
        raise OvsegError(f"shot_threshold must be between 0 and 255, not {cfg.shot_threshold}")
    _check_range("size", cfg.size, 16, MAX_SIDE, " pixels")
    _check_range("window", cfg.window, 16, MAX_SIDE, " pixels")
    _check_range("stride", cfg.stride, 16, MAX_SIDE, " pixels")
    if cfg.stride is not None and cfg.window is None:
        raise OvsegError("stride needs window (the sliding windows it steps between)")
    if cfg.stride is not None and cfg.window is not None and cfg.stride > cfg.window:
        raise OvsegError(
            f"stride ({cfg.stride} px) must not exceed window ({cfg.window} px): the windows "
            "would leave parts of the image unseen"
        )
    if cfg.start < 0:
        raise OvsegError(f"start must be >= 0 seconds, not {cfg.start}")
    if cfg.end is not None and cfg.end <= cfg.start:
        raise OvsegError(f"end ({cfg.end} s) must be after start ({cfg.start} s)")
    if cfg.threshold is not None and not 0.0 < cfg.threshold < 1.0:
        raise OvsegError(f"threshold must be between 0 and 1 (exclusive), not {cfg.threshold}")
    if cfg.background is not None and not cfg.background.strip():
        raise OvsegError("background must be a class name, not empty")
    _check_keyframes(cfg)
    if cfg.export is not None:
        from ovseg_cli.exports import parse_exports

        cfg.export = tuple(parse_exports(cfg.export)) or None  # lower case, no repeats


def _check_keyframes(cfg: SegmentConfig) -> None:
    value = cfg.keyframe_interval
    text = str(value).strip().lower()
    if text == AUTO:
        cfg.keyframe_interval = AUTO
    elif isinstance(value, int) or text.isdigit():
        cfg.keyframe_interval = int(text)  # the one form from here on: an int, or "auto"
        _check_range("keyframe_interval", cfg.keyframe_interval, 1, MAX_INTERVAL)
    else:
        raise OvsegError(f"keyframe_interval must be a whole number >= 1 or 'auto', not {value!r}")
    _check_range("max_interval", cfg.max_interval, 1, MAX_INTERVAL)
    if not 0.0 < cfg.keyframe_error <= 1.0:
        raise OvsegError(f"keyframe_error must be in (0, 1], not {cfg.keyframe_error}")
    if cfg.bidirectional and cfg.keyframe_interval == 1:
        raise OvsegError("bidirectional needs keyframe_interval above 1 or auto")
    _check_range("flow_size", cfg.flow_size, 16, MAX_SIDE, " pixels")
    _check_range("batch", cfg.batch, 1, MAX_BATCH)


def _check_range(name: str, value: int | None, low: int, high: int, unit: str = "") -> None:
    """None (the default) or low <= value <= high, else a one-line error."""
    if value is not None and not low <= value <= high:
        raise OvsegError(f"{name} must be between {low} and {high}{unit}, not {value}")
