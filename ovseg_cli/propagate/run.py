"""One `ovseg propagate` run: a video and sparse labels in, a complete output folder out.

The folder is the one `segment` writes (overlay.mp4, masks/ with labelmap.txt, exports,
meta.json, config.yaml), through the same ``ResultWriter``, under a temporary name renamed
into place when complete. Without ``--fill model`` no CLIP is loaded (nor needed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_cli import __version__
from ovseg_cli.classes import ClassSpec, read_classes_file, readable
from ovseg_cli.config import PropagateConfig, SegmentConfig
from ovseg_cli.config_io import to_dict
from ovseg_cli.errors import OvsegError
from ovseg_cli.outputs import OutputFolder, check_destination
from ovseg_cli.segment.run import SegmentRun, input_meta, run_inputs
from ovseg_cli.segment.run import default_out_dir as segment_out_dir
from ovseg_cli.segment.writing import ResultWriter, abandon, complete
from ovseg_cli.video.reader import VideoInfo, VideoReader


def default_out_dir(video: str | Path) -> Path:
    """``<video stem>_propagated`` in the current directory."""
    return segment_out_dir(video, "propagated")


def label_prompts(names: Sequence[str], classes_file: str | Path | None) -> list[ClassSpec]:
    """The labels' classes as prompts for a model: the classes file's, else the names."""
    given = {s.name: s for s in read_classes_file(classes_file)} if classes_file else {}
    specs = []
    for name in names:
        spec = given.get(name)
        specs.append(ClassSpec(name, spec.prompts if spec else (readable(name),)))
    return specs


def model_filler(
    model: Any, specs: Sequence[ClassSpec], size: int | None = None
) -> Callable[[np.ndarray, bool], np.ndarray]:
    """A function that segments one frame with the model: the frames no labelled frame
    reaches. Its temporal state runs over the frames it segments and restarts at a cut."""
    from ovseg_cli.segment.masks import logits_to_mask

    vocabulary = model.encode_vocabulary(specs)
    state = model.init_state()

    def fill(rgb: np.ndarray, shot_start: bool) -> np.ndarray:
        nonlocal state
        if shot_start:
            state.reset()
        outputs, state = model.step_batch(model.prepare(rgb, size), state, vocabulary)
        return logits_to_mask(outputs[0].float(), rgb.shape[:2], None)

    return fill


def run_propagate(
    video: str | Path,
    labels: str | Path,
    config: PropagateConfig,
    model_config: SegmentConfig | None = None,
    *,
    classes_file: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    model: Any = None,
    on_start: Callable[[VideoInfo, int | None], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_frame: Callable[[Any], None] | None = None,
) -> SegmentRun:
    """Propagate ``labels`` through ``video`` and write the output folder; nothing is left
    behind on failure. ``model_config``: the model that ``--fill model`` runs. The result's
    ``segment_seconds`` is the propagation loop's time."""
    from ovseg_cli.propagate.engine import LabelPropagation, PropagateSettings
    from ovseg_cli.propagate.labels import read_labels

    seg = model_config or SegmentConfig()
    if not (config.overlay or config.masks or config.export):
        raise OvsegError("nothing to write: --no-overlay needs --masks or --export")
    read = [Path(labels), *([Path(classes_file)] if classes_file else []), *inputs]
    if config.fill == "model":
        read += run_inputs(video, seg)[1:]  # the weights
    destination = default_out_dir(video) if out is None else out
    check_destination(destination, "propagate", overwrite=overwrite, inputs=[video, *read])
    label_set = read_labels(labels, classes_file, empty_frames=config.empty_frames)
    names, colors = label_set.names, label_set.colors
    unlabelled = True  # people leave pixels unlabelled, and so may frames no label reaches
    exports = list(config.export or [])
    if exports:
        from ovseg_cli.exports import check_exports

        check_exports(exports, names, colors)
    reader = VideoReader(video)
    info = reader.info
    propagation = sink = folder = None
    try:
        propagation = LabelPropagation(reader, label_set, PropagateSettings.from_config(config))
        folder = OutputFolder(destination, "propagate", overwrite=overwrite, inputs=[video, *read])
        t0 = time.perf_counter()
        if config.fill == "model":
            from ovseg_cli.runtime import export_listener
            from ovseg_cli.segment.loading import load_model

            with export_listener(on_status or (lambda message: None)):
                model = model or load_model(seg)
            propagation.fill = model_filler(model, label_prompts(names, classes_file), seg.size)
        load_seconds = time.perf_counter() - t0
        sink = ResultWriter(
            folder.path, video, info, names, colors, overlay=config.overlay,
            masks=config.masks, exports=exports, alpha=config.alpha, unlabelled=unlabelled,
        )  # fmt: skip
        if on_start is not None:
            on_start(info, info.frame_count)
        t1 = time.perf_counter()
        frames = 0
        for result in propagation:
            sink.submit(result)
            frames += 1
            if on_frame is not None:
                on_frame(result)
        exported = sink.finish()
        seconds = time.perf_counter() - t1
        meta = {
            "ovseg_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": input_meta(info),
            "labels": label_set.describe(),
            "output": sink.describe(frames, reader, propagation.skipped, exported),
            "classes": [
                {"index": i, "name": n, "color": list(c)}
                for i, (n, c) in enumerate(zip(names, colors, strict=True))
            ],
            "model": model.describe() if model is not None else None,
            "propagation": propagation.describe(),
            "shots": propagation.describe_shots(),
            "timings": {
                "load_s": round(load_seconds, 3),
                "propagate_s": round(seconds, 3),
                "fps": round(frames / seconds, 3) if seconds else None,
            },
            "config": {"propagate": to_dict(config), "segment": to_dict(seg)},
        }
        out_dir = complete(folder, meta, meta["config"])
        return SegmentRun(out_dir, frames, propagation.skipped, load_seconds, seconds, meta)
    except BaseException:
        abandon(sink, folder)
        raise
    finally:
        if propagation is not None:
            propagation.close()
        reader.close()
        label_set.close()
