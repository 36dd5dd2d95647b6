"""The pools around the model (issue 22): frames drawn by several threads reach the encoder
and the exports in order, none lost, memory bounded, errors raised; flows and dataset images
computed ahead by pools; the outputs do not change."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from video_factory import make_video

from ovseg_cli.threads import OrderedPool


def test_results_reach_the_sink_in_order_with_many_workers() -> None:
    seen: list[int] = []
    busy, peak = 0, 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        time.sleep(random.Random(i).uniform(0, 0.01))  # finish out of order
        with lock:
            busy -= 1
        return i * i

    pool = OrderedPool(work, seen.append, workers=4, depth=6)
    for i in range(200):
        pool.submit(i)
    pool.finish()
    assert seen == [i * i for i in range(200)]
    assert 1 < peak <= 4  # the work ran in parallel, within the pool


def test_items_in_flight_are_bounded() -> None:
    release = threading.Event()
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        release.wait(5)
        return i

    pool = OrderedPool(work, lambda _: None, workers=2, depth=3)
    feeder = threading.Thread(target=lambda: [pool.submit(i) for i in range(50)], daemon=True)
    feeder.start()
    time.sleep(0.3)
    assert len(started) <= 2 and feeder.is_alive()  # the producer waits: nothing piles up
    release.set()
    feeder.join(5)
    pool.finish()
    assert sorted(started) == list(range(50))


@pytest.mark.parametrize("where", ["work", "sink"])
def test_the_first_error_is_raised_and_later_items_dropped(where: str) -> None:
    sunk: list[int] = []

    def work(i: int) -> int:
        if where == "work" and i == 5:
            raise OSError("disk full")
        return i

    def sink(i: int) -> None:
        if where == "sink" and i == 5:
            raise OSError("disk full")
        sunk.append(i)

    pool = OrderedPool(work, sink, workers=3, depth=4)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            pool.submit(i)
        pool.finish()
    pool.stop()  # idempotent, never raises
    assert sunk == list(range(5))


def test_outputs_do_not_depend_on_the_number_of_drawing_threads(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovseg_cli.classes import parse_classes
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment import run, writing

    video = make_video(tmp_path / "v.mp4", frames=30, size=(96, 64), audio=True)
    cfg = SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights), size=64, masks=True,
                        export=("cvat", "coco", "stats"), keyframe_interval=4)  # fmt: skip
    outputs = []
    for threads in (1, 4):
        monkeypatch.setattr(writing, "writer_threads", lambda threads=threads: threads)
        out = tmp_path / f"t{threads}"
        run.run_segment(video, parse_classes("road,sky,tree"), cfg, out=out)
        outputs.append(_contents(out))
    assert len(outputs[0]["masks"]) == 30
    assert outputs[0] == outputs[1]


def _contents(out: Path) -> dict:
    """What a run wrote, without the times it was written at (zip entries, COCO's info)."""
    import json
    import zipfile

    coco = json.loads((out / "coco.json").read_text())
    coco["info"].pop("date_created")
    with zipfile.ZipFile(out / "cvat.zip") as z:
        cvat = {name: z.read(name) for name in z.namelist()}
    return {
        "masks": [p.read_bytes() for p in sorted((out / "masks").glob("*.png"))],
        "overlay": (out / "overlay.mp4").read_bytes(),
        "stats": (out / "stats.csv").read_bytes(),
        "coco": coco,
        "cvat": cvat,
    }


def _clip_with_a_cut(path: Path) -> Path:
    """20 frames: the moving square, then a cut to another scene."""
    import av
    import numpy as np
    from video_factory import expected_frame

    rng = np.random.default_rng(0)
    other = (rng.integers(0, 60, (64, 96, 3)) + np.array([20, 160, 40])).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast", "crf": "12"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(20):
            rgb = expected_frame(i, (96, 64)) if i < 11 else np.roll(other, 3 * i, axis=1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    "settings",
    [{}, {"keyframe_interval": 4}, {"keyframe_interval": 4, "bidirectional": True}],
    ids=["K1", "K4", "K4-bidirectional"],
)
def test_written_masks_are_the_streams_in_order(
    tmp_path: Path, tiny_model, tiny_weights: Path, settings: dict, monkeypatch
) -> None:
    import numpy as np
    from PIL import Image

    from ovseg_cli.classes import parse_classes
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment import run, writing
    from ovseg_cli.segment.stream import segment_video

    monkeypatch.setattr(writing, "writer_threads", lambda: 4)
    cfg = SegmentConfig(clip="ovseg-tiny", pretrained=str(tiny_weights), size=64,
                        dense_method="clearclip", templates="vild", masks=True, **settings)  # fmt: skip
    for video in (_clip_with_a_cut(tmp_path / "cut.mp4"),
                  make_video(tmp_path / "v.mkv", frames=17, size=(80, 48))):  # fmt: skip
        out = tmp_path / f"out-{video.stem}"
        done = run.run_segment(video, parse_classes("road,sky,tree"), cfg, out=out,
                               model=tiny_model)  # fmt: skip
        with segment_video(video, "road,sky,tree", model=tiny_model, config=cfg) as stream:
            expected = [r.mask for r in stream]
            cuts = stream.cuts
        written = [np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))]
        assert len(written) == len(expected) == done.frames
        assert all(np.array_equal(a, b) for a, b in zip(written, expected, strict=True))
        if video.stem == "cut":
            assert cuts == [11] and done.meta["shots"]["cuts"] == [11]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_flows_on_a_pool_give_the_masks_of_one_thread(
    tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch, bidirectional: bool
) -> None:
    import numpy as np

    from ovseg_cli.segment import stream as stream_module
    from ovseg_cli.segment.stream import segment_video

    video = _clip_with_a_cut(tmp_path / "cut.mp4")
    masks = {}
    for workers in (1, 4):
        monkeypatch.setattr(stream_module, "flow_threads", lambda workers=workers: workers)
        with segment_video(video, "road,sky,tree", model=tiny_model, keyframe_interval=4,
                           bidirectional=bidirectional, size=64) as s:  # fmt: skip
            assert s.flow_workers == workers
            masks[workers] = [(r.index, r.is_keyframe, r.mask) for r in s]
    assert [m[:2] for m in masks[1]] == [m[:2] for m in masks[4]]
    assert sum(not key for _, key, _ in masks[4]) >= 12  # most frames came from the flows
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(masks[1], masks[4], strict=True))


@pytest.mark.parametrize("keyframe_interval", [1, 4])
def test_inputs_resized_on_a_pool_keep_their_frames(
    tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch, keyframe_interval: int
) -> None:
    import numpy as np

    from ovseg_cli.segment import stream as stream_module
    from ovseg_cli.segment.stream import segment_video

    video = _clip_with_a_cut(tmp_path / "cut.mp4")
    rng, threads, prepare = random.Random(0), set(), tiny_model.prepare

    def slow_prepare(rgb, short_side=None):  # later frames often finish first
        threads.add(threading.current_thread().name)
        time.sleep(rng.random() * 0.02)
        return prepare(rgb, short_side)

    masks = {}
    for workers in (1, 4):
        monkeypatch.setattr(stream_module, "prepare_threads", lambda workers=workers: workers)
        if workers > 1:
            monkeypatch.setattr(tiny_model, "prepare", slow_prepare)
        with segment_video(video, "road,sky,tree", model=tiny_model, batch=3, size=64,
                           keyframe_interval=keyframe_interval) as s:  # fmt: skip
            masks[workers] = [(r.index, r.is_keyframe, r.mask) for r in s]
            assert s.cuts == [11]
    assert len({name for name in threads if name.startswith("ovseg-prepare")}) > 1
    assert [m[:2] for m in masks[1]] == [m[:2] for m in masks[4]]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(masks[1], masks[4], strict=True))


def test_dataset_images_read_ahead_by_a_pool_come_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from PIL import Image

    from ovseg_cli.errors import OvsegError
    from ovseg_cli.video import images

    rng = np.random.default_rng(0)
    paths = []
    for i in range(25):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(paths[-1])
    frames = {}
    for workers in (1, 4):
        monkeypatch.setattr(images, "image_threads", lambda workers=workers: workers)
        frames[workers] = [(f.index, f.rgb) for f in images.ImageSequence(paths)]
    assert [i for i, _ in frames[4]] == list(range(25))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(frames[1], frames[4], strict=True))
    paths[7].write_bytes(b"not an image")  # an error in a worker surfaces in order
    seen = []
    with pytest.raises(OvsegError, match=r"007\.png"):
        for f in images.ImageSequence(paths):
            seen.append(f.index)
    assert seen == list(range(7))


def test_flows_asked_for_before_the_pool_closes_are_all_computed() -> None:
    import numpy as np

    from ovseg_cli.segment.propagation import FlowPool
    from ovseg_cli.threads import resolved

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (120, 160), dtype=np.uint8) for _ in range(2)]
    pool = FlowPool("fast", None, workers=2)
    pending = [pool.submit(frames[0], frames[1]) for _ in range(16)]
    pool.close()  # the reader reached the end of the video: the flows are still wanted
    flows = [resolved(f) for f in pending]
    assert all(f.field.shape == (120, 160, 2) for f in flows)


def test_memory_stays_flat_over_a_long_clip(tmp_path: Path, tiny_weights: Path) -> None:
    """Four times the frames through the whole run (keyframes, bidirectional flows, overlay,
    masks, exports), the same peak memory: the queues and pools are bounded."""
    import tracemalloc

    from ovseg_cli.classes import parse_classes
    from ovseg_cli.config import SegmentConfig
    from ovseg_cli.segment.run import run_segment

    cfg = SegmentConfig(
        clip="ovseg-tiny", pretrained=str(tiny_weights), size=64, masks=True,
        export=("cvat", "coco"), keyframe_interval=4, bidirectional=True,
    )  # fmt: skip
    peaks = {}
    for frames in (40, 160):
        video = make_video(tmp_path / f"clip{frames}.mp4", frames=frames, size=(192, 128))
        for attempt in ("warm", "measured"):  # caches and first imports are not the clip's
            out = tmp_path / f"out{frames}{attempt}"
            tracemalloc.start()
            try:
                run_segment(video, parse_classes("road,sky,tree"), cfg, out=out)
                peaks[frames] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    # the frames in flight vary with thread timing (a dozen at most, in the bounded queues);
    # holding the 120 frames more would add ten times that
    assert peaks[160] < peaks[40] + 12 * 192 * 128 * 3, peaks
