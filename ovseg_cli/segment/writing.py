"""Writing per-frame results into an output folder: overlay.mp4, masks/, exports.

`segment` and `propagate` write the same folder from the same kind of results
(``FrameResult``), through one ``ResultWriter``: overlays and PNG masks are drawn by a pool
of threads (each frame alone), the encoder and the exports take the frames in order in one
more thread. Everything goes into the run's folder while it still has its temporary name;
the caller commits or discards the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovseg_cli.classes import RGB
from ovseg_cli.video.reader import VideoInfo

MASK_FORMAT = "palette PNG, pixel value = class index, 255 = unlabelled"
MAX_WRITER_THREADS = 4  # overlays and PNG masks drawn at once; the encoder is one more


def writer_threads() -> int:
    """Threads that draw overlays and write PNG masks: a core's worth each, up to 4, leaving
    one core to the model and the decoder where there are few."""
    from ovseg_cli.threads import spare_cores

    return spare_cores(MAX_WRITER_THREADS)


class ResultWriter:
    """Overlay video, palette masks and exports of one run, fed results in frame order."""

    def __init__(
        self,
        folder: Path,
        video: str | Path,
        info: VideoInfo,
        names: Sequence[str],
        colors: Sequence[RGB],
        *,
        overlay: bool,
        masks: bool,
        exports: Sequence[str] = (),
        alpha: float = 0.5,
        device: Any = "cpu",
        unlabelled: bool = False,
        start: float = 0.0,
        end: float | None = None,
        depth: int = 4,
    ) -> None:
        from ovseg_cli.threads import OrderedPool
        from ovseg_cli.video.rendering import overlay_renderer, palette_bytes
        from ovseg_cli.video.writer import VideoWriter

        self.folder = folder
        self.names, self.colors = list(names), list(colors)
        self.masks = masks
        self.unlabelled = unlabelled  # masks may hold 255: labelmap.txt declares black
        self.writer: Any = None
        self.sinks: Any = None
        self.pool: Any = None
        try:
            if overlay:
                self.writer = VideoWriter(
                    folder / "overlay.mp4", info, audio_from=video, start=start, end=end
                )
            self.renderer = overlay_renderer(self.names, self.colors, alpha, device)
            self.palette = palette_bytes(self.colors)
            if masks:
                (folder / "masks").mkdir()
            if exports:
                from ovseg_cli.exports import ExportContext, ExportSet

                context = ExportContext(
                    folder, self.names, self.colors, Path(video).name, unlabelled
                )
                self.sinks = ExportSet(exports, context, fps=info.average_rate, start=start)
            workers = writer_threads()
            # room for a batch of frames, and one in each drawing thread
            self.pool = OrderedPool(self._draw, self._write, workers=workers, depth=depth + workers)
        except BaseException:
            self.abort()
            raise

    @property
    def codec_name(self) -> str | None:
        """The overlay's video codec (None without an overlay)."""
        return self.writer.codec_name if self.writer is not None else None

    def _draw(self, result: Any) -> tuple[Any, Any]:
        """Any pool thread: the work each frame needs alone (overlay, PNG mask)."""
        from ovseg_cli.video.rendering import save_palette_png

        overlay = self.renderer.render(result.frame, result.mask) if self.writer else None
        if self.masks:
            path = self.folder / "masks" / f"{result.index:06d}.png"
            save_palette_png(result.mask, self.palette, path)
        return result, overlay

    def _write(self, drawn: tuple[Any, Any]) -> None:
        """One thread, frames in order: the encoder and the exports need the order."""
        result, overlay = drawn
        if self.writer is not None:
            self.writer.write(overlay, result.pts)
        if self.sinks is not None:  # each export writes the frame out now, keeping nothing
            self.sinks.add(result.index, result.time, result.mask)

    def submit(self, result: Any) -> None:
        """Queue one frame's result (blocks while the pool is full)."""
        self.pool.submit(result)

    def finish(self) -> dict[str, Any]:
        """Wait for every frame, close the files; what the exports wrote, for meta.json."""
        from ovseg_cli.exports.cvat import labelmap_text

        self.pool.finish()
        if self.writer is not None:
            self.writer.close()
        exported = self.sinks.close() if self.sinks is not None else {}
        if self.masks:  # black (255) is declared where masks may hold it
            text = labelmap_text(
                self.names, self.colors, background="last" if self.unlabelled else None
            )
            (self.folder / "labelmap.txt").write_text(text, encoding="utf-8")
        return exported

    def describe(
        self, frames: int, reader: Any, skipped: int, exported: dict[str, Any]
    ) -> dict[str, Any]:
        """meta.json's ``output`` block: what was read and what this writer wrote."""
        return {
            "frames": frames,
            "frames_expected": reader.frames_expected,  # what the container announced
            "truncated": reader.truncated,
            "skipped_frames": skipped,
            "overlay": "overlay.mp4" if self.writer is not None else None,
            "video_codec": self.codec_name,
            "masks": "masks/" if self.masks else None,
            "mask_format": MASK_FORMAT,
            "exports": exported,
        }

    def abort(self) -> None:
        """Stop writing and drop the partial files (the folder is the caller's to discard)."""
        if self.pool is not None:
            self.pool.stop()  # the writer thread must be idle before the file is dropped
        if self.writer is not None:
            self.writer.abort()
        if self.sinks is not None:
            self.sinks.abort()


def abandon(writer: ResultWriter | None, folder: Any) -> None:
    """Stop writing and drop the run's partial folder: the way out of a failed run."""
    if writer is not None:
        writer.abort()
    if folder is not None:
        folder.discard()


def complete(folder: Any, meta: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write meta.json and config.yaml (the resolved settings) and move the folder into
    place: the last step of a run."""
    import yaml

    folder.write_json("meta.json", meta)
    folder.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder.commit()
