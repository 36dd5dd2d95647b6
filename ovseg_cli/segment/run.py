"""One `ovseg segment` run: video in, a complete output folder out.

Overlay, masks and annotation-tool exports are written frame by frame in one writer
thread, meta.json at the end, all into a folder renamed into place only when complete.

The CLI and the benchmark both call ``run_segment``; the CLI adds only argument parsing
and a progress bar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovseg_cli import __version__
from ovseg_cli.batch.fingerprint import settings_fingerprint
from ovseg_cli.classes import ClassSpec, colors_for, with_background
from ovseg_cli.config import SegmentConfig
from ovseg_cli.config_io import to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import OutputFolder, check_destination
from ovseg_cli.segment.writing import ResultWriter, abandon, complete
from ovseg_cli.video.reader import VideoInfo, VideoReader

if TYPE_CHECKING:
    from ovseg_cli.clip.prompts import Vocabulary


@dataclass
class SegmentRun:
    """What a finished run wrote and how long it took."""

    out_dir: Path
    frames: int
    skipped: int
    load_seconds: float
    segment_seconds: float
    meta: dict[str, Any]

    @property
    def fps(self) -> float:
        """Frames per second of the segmentation loop (model loading excluded)."""
        return self.frames / self.segment_seconds if self.segment_seconds > 0 else 0.0


def default_out_dir(video: str | Path, suffix: str = "ovseg") -> Path:
    """``<video stem>_<suffix>`` in the current directory."""
    return Path.cwd() / f"{Path(video).stem}_{suffix}"


def _fraction(value: Any) -> str:
    return f"{value.numerator}/{value.denominator}"


def input_meta(info: VideoInfo, start: float = 0.0, end: float | None = None) -> dict[str, Any]:
    """What meta.json says of the input video (its file's size and time: a batch redoes a
    video whose file changed)."""
    st = os.stat(info.path)
    return {
        "path": str(Path(info.path).absolute()),
        "bytes": st.st_size,  # with modified_ns: a batch redoes a video whose file changed
        "modified_ns": st.st_mtime_ns,
        "width": info.width,
        "height": info.height,
        "rotation": info.rotation,
        "fps": _fraction(info.average_rate),
        "fps_float": float(info.average_rate),
        "time_base": _fraction(info.time_base),
        "codec": info.codec,
        "duration_s": info.duration,
        "frame_count": info.frame_count,
        "audio": info.has_audio,
        "start_s": start,
        "end_s": end,
    }


def run_inputs(video: str | Path, config: SegmentConfig) -> list[Path]:
    """Files a segment run reads, which its output folder must never replace or hold."""
    paths = [Path(video)]
    if config.checkpoint:
        from ovseg_cli.model.checkpoint import checkpoint_paths

        paths.extend(checkpoint_paths(config.checkpoint))
    if config.pretrained and Path(config.pretrained).expanduser().exists():
        paths.append(Path(config.pretrained))
    return paths


def check_outputs(classes: Sequence[ClassSpec], config: SegmentConfig) -> list[ClassSpec]:
    """The classes with the background class; OvsegError when the settings write nothing
    or an export cannot take the classes (checked before any video is opened)."""
    classes = with_background(classes, config.background)
    exports = config.export or []
    if not (config.overlay or config.masks or exports):
        raise OvsegError("nothing to write: --no-overlay needs --masks or --export")
    if exports:
        from ovseg_cli.exports import check_exports

        check_exports(exports, [c.name for c in classes], colors_for(classes))
    return classes


def run_segment(
    video: str | Path,
    classes: Sequence[ClassSpec],
    config: SegmentConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    model: Any = None,
    vocabulary: Vocabulary | None = None,
    on_start: Callable[[VideoInfo, int | None], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_frame: Callable[[Any], None] | None = None,
) -> SegmentRun:
    """Segment ``video`` and write the output folder; nothing is left behind on failure.

    ``inputs``: more files the run reads (classes file, config file), which the output
    folder may not be or hold, like the video and the weights. ``vocabulary``: the
    classes' text embeddings from ``model.encode_vocabulary`` (with the background class),
    built once for many videos.
    """
    classes = check_outputs(classes, config)
    exports = config.export or []
    # cheap checks first: bad input fails before torch is even imported
    destination = default_out_dir(video) if out is None else out
    check_destination(
        destination, "segment", overwrite=overwrite, inputs=[*run_inputs(video, config), *inputs]
    )
    reader = VideoReader(video, start=config.start, end=config.end)
    info = reader.info

    from ovseg_cli.runtime import export_listener
    from ovseg_cli.segment.loading import load_model
    from ovseg_cli.segment.stream import SegmentationStream, StreamSettings

    stream = sink = folder = None
    try:
        folder = OutputFolder(
            destination, "segment", overwrite=overwrite,
            inputs=[*run_inputs(video, config), *inputs],
        )  # fmt: skip
        t0 = time.perf_counter()
        with export_listener(on_status or (lambda message: None)):  # an ONNX export says so
            model = model or load_model(config)
        vocabulary = vocabulary or model.encode_vocabulary(classes)
        load_seconds = time.perf_counter() - t0
        stream = SegmentationStream(reader, vocabulary, model, StreamSettings.from_config(config))
        sink = ResultWriter(
            folder.path, video, info, vocabulary.names, vocabulary.colors,
            overlay=config.overlay, masks=config.masks, exports=exports, alpha=config.alpha,
            device=model.device, unlabelled=config.threshold is not None,  # masks may hold 255
            start=config.start, end=config.end, depth=max(4, stream.batch),
        )  # fmt: skip
        if on_start is not None:
            on_start(info, info.frames_between(config.start, config.end))
        t1 = time.perf_counter()
        frames = 0
        keyframes: list[int] = []  # indices only: a few bytes per keyframe
        for result in stream:
            sink.submit(result)
            frames += 1
            if result.is_keyframe:
                keyframes.append(result.index)
            if on_frame is not None:
                on_frame(result)
        exported = sink.finish()
        segment_seconds = time.perf_counter() - t1

        meta = {
            "ovseg_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": input_meta(info, config.start, config.end),
            "output": sink.describe(frames, reader, stream.skipped, exported),
            "classes": [
                {"index": i, "name": c.name, "prompts": list(c.texts), "color": list(col)}
                for i, (c, col) in enumerate(
                    zip(vocabulary.classes, vocabulary.colors, strict=True)
                )
            ],
            "prompt_templates": list(vocabulary.templates),
            "model": model.describe(),
            "propagation": {
                **stream.describe(),
                "keyframes": len(keyframes),
                "keyframe_share": round(len(keyframes) / frames, 4) if frames else None,
                "keyframe_indices": keyframes,
            },
            "shots": stream.describe_shots(),
            "timings": {
                "load_s": round(load_seconds, 3),
                "segment_s": round(segment_seconds, 3),
                "fps": round(frames / segment_seconds, 3) if segment_seconds else None,
            },
            "config": to_dict(config),
            "settings_fingerprint": settings_fingerprint(config, classes),
        }
        out_dir = complete(folder, meta, to_dict(config))
        return SegmentRun(out_dir, frames, stream.skipped, load_seconds, segment_seconds, meta)
    except BaseException:
        abandon(sink, folder)
        raise
    finally:
        if stream is not None:
            stream.close()
        reader.close()
