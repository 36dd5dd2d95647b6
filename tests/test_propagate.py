"""`ovseg propagate` and `propagate_video`: a person's sparse labels carried through a video."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image
from typer.testing import CliRunner
from video_factory import joined_clips, make_video

from ovseg_cli.cli import app

W, H = 160, 120
RADIUS = 14
NAMES = ["ground", "disc", "box"]
COLORS = [(90, 90, 90), (230, 40, 40), (40, 40, 230)]


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return (255 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.uint8)


def shapes(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of a static textured ground with a disc moving right 2 px a frame and
    a box moving down 1 px a frame, each textured; and its true label map."""
    frame = _texture(H, W, 1).copy()
    labels = np.zeros((H, W), np.uint8)
    ys, xs = np.mgrid[0:H, 0:W]
    cx, cy = 30 + 2 * index, 40
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= RADIUS**2
    frame[disc] = _texture(H, W, 2)[disc] // 2 + 120  # bright: its own look
    labels[disc] = 1
    top = 20 + index
    box = (xs >= 100) & (xs < 124) & (ys >= top) & (ys < top + 24)
    frame[box] = _texture(H, W, 3)[box] // 3
    labels[box] = 2
    return frame, labels


def write_video(path: Path, frames: list[np.ndarray], rate: int = 15) -> Path:
    """A lossless video (PNG in QuickTime) of these frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb24"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_labels(folder: Path, masks: dict[int, np.ndarray], names=NAMES, colors=None) -> Path:
    """A mask folder as a person would give it: frame_NNNNNN.png indices and labelmap.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    colors = colors or COLORS[: len(names)]
    lines = [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(names, colors, strict=True)]
    (folder / "labelmap.txt").write_text("\n".join(lines) + "\n")
    for i, mask in masks.items():
        Image.fromarray(mask, "L").save(folder / f"frame_{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """33 frames of moving shapes and their true label maps."""
    pairs = [shapes(i) for i in range(33)]
    path = write_video(tmp_path_factory.mktemp("shapes") / "shapes.mov", [f for f, _ in pairs])
    return path, [m for _, m in pairs]


def near_boundary(truth: np.ndarray, pixels: int) -> np.ndarray:
    """Pixels within ``pixels`` of a boundary between two classes of ``truth``."""
    kernel = np.ones((3, 3), np.uint8)
    edges = cv2.morphologyEx(truth, cv2.MORPH_GRADIENT, kernel) > 0
    return cv2.dilate(edges.astype(np.uint8), kernel, iterations=pixels) > 0


def test_shapes_between_labels_every_8th_frame_within_two_pixels(clip, tmp_path):
    from ovseg_cli import propagate_video

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {i: truth[i] for i in range(0, 33, 8)})
    results = list(propagate_video(video, labels))
    assert [r.index for r in results] == list(range(33))
    for r in results:
        assert r.is_keyframe == (r.index % 8 == 0)
        wrong = r.mask != truth[r.index]
        if r.is_keyframe:
            assert not wrong.any()
            continue
        # every mistake lies within 2 px of a true boundary, and on average they are less
        # than a pixel deep (the gradient band is 2 px wide along each boundary)
        assert not (wrong & ~near_boundary(truth[r.index], 2)).any(), r.index
        assert wrong.sum() < 0.5 * near_boundary(truth[r.index], 0).sum(), r.index


def test_forward_only_tracks_close_frames_and_both_sides_halve_the_errors(clip, tmp_path):
    """From one side, what a moving object uncovers keeps its label for a while (the
    flow cannot tell what was behind it): the next labelled frame fixes that."""
    from ovseg_cli import propagate_video

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {i: truth[i] for i in range(0, 33, 8)})
    errors = {}
    for both in (True, False):
        results = list(propagate_video(video, labels, bidirectional=both))
        errors[both] = sum(int((r.mask != truth[r.index]).sum()) for r in results)
        for r in results:
            if r.index % 8 in (1, 2):
                wrong = r.mask != truth[r.index]
                assert not (wrong & ~near_boundary(truth[r.index], 2)).any(), (both, r.index)
    assert errors[True] < errors[False] / 2, errors


def test_labelled_frames_pass_through_bit_exact(clip, tmp_path):
    """A person's labels come back untouched, holes (255) and odd shapes included."""
    video, truth = clip
    given = {}
    rng = np.random.default_rng(0)
    for i in (0, 5, 17, 32):
        mask = truth[i].copy()
        mask[rng.random(mask.shape) < 0.1] = 255  # speckles nobody labelled
        mask[:3, :] = 2  # a wrong stripe: still the person's call
        given[i] = mask
    labels = write_labels(tmp_path / "labels", given)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["propagate", str(video), "--labels", str(labels), "--masks", "--out", str(out), "-q"]
    )
    assert res.exit_code == 0, res.output
    for i, mask in given.items():
        assert np.array_equal(np.asarray(Image.open(out / "masks" / f"{i:06d}.png")), mask)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["propagation"]["keyframe_indices"] == sorted(given)
    assert meta["labels"]["frames"] == sorted(given)
    assert [c["name"] for c in meta["classes"]] == NAMES
    # an unlabelled pixel stays unlabelled where it lands
    middle = np.asarray(Image.open(out / "masks" / "000002.png"))
    assert (middle == 255).any()
    assert (out / "overlay.mp4").exists() and (out / "config.yaml").exists()
    lines = (out / "labelmap.txt").read_text().splitlines()
    assert lines[1:4] == [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(NAMES, COLORS, strict=True)]


def test_frames_before_the_first_and_after_the_last_label_take_the_nearest(clip, tmp_path):
    from ovseg_cli import propagate_video

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {12: truth[12], 20: truth[20]})
    results = list(propagate_video(video, labels))
    for r in (results[10], results[11], results[21], results[22]):  # one side only, close by
        wrong = r.mask != truth[r.index]
        assert not (wrong & ~near_boundary(truth[r.index], 2)).any(), r.index


def test_own_exports_of_a_segment_run_reproduce_its_masks(tiny_weights, tmp_path):
    """cvat.zip and coco.json of a run, given back as labels, give its masks exactly."""
    video = make_video(tmp_path / "clip.mp4", frames=6, size=(96, 64))
    seg = tmp_path / "seg"
    runner = CliRunner()
    res = runner.invoke(app, [
        "segment", str(video), "--classes", "sky,tree,road", "--clip", "ovseg-tiny",
        "--pretrained", str(tiny_weights), "--size", "64", "--masks", "--no-overlay",
        "--export", "cvat,coco", "--out", str(seg), "-q",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    for source in ("cvat.zip", "coco.json", "masks"):
        out = tmp_path / f"from_{source}"
        res = runner.invoke(app, [
            "propagate", str(video), "--labels", str(seg / source), "--masks", "--no-overlay",
            "--out", str(out), "-q",
        ])  # fmt: skip
        assert res.exit_code == 0, (source, res.output)
        meta = json.loads((out / "meta.json").read_text())
        assert [c["name"] for c in meta["classes"]] == ["sky", "tree", "road"], source
        labelled = meta["propagation"]["keyframe_indices"]
        assert labelled, source
        for i in labelled:
            ours = np.asarray(Image.open(out / "masks" / f"{i:06d}.png"))
            theirs = np.asarray(Image.open(seg / "masks" / f"{i:06d}.png"))
            assert np.array_equal(ours, theirs), (source, i)


def test_a_shot_cut_stops_propagation(tmp_path):
    from ovseg_cli import propagate_video

    video = joined_clips(tmp_path / "joined.mp4", first=10, second=10)
    ones = np.ones((64, 96), np.uint8)
    labels = write_labels(tmp_path / "first", {0: ones}, ["a", "b"], COLORS[:2])
    stream = propagate_video(video, labels)
    results = list(stream)
    assert stream.counts.cuts == [10]
    assert all((r.mask == 1).all() for r in results[:10])
    assert all((r.mask == 255).all() for r in results[10:])  # the other shot: no labels
    labels = write_labels(tmp_path / "second", {15: ones}, ["a", "b"], COLORS[:2])
    results = list(propagate_video(video, labels))
    assert all((r.mask == 255).all() for r in results[:10])
    assert all((r.mask == 1).all() for r in results[10:])
    assert results[10].shot_start and not results[10].is_keyframe


def test_max_gap_leaves_far_frames_unlabelled(clip, tmp_path):
    from ovseg_cli import propagate_video

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {0: truth[0], 20: truth[20]})
    stream = propagate_video(video, labels, max_gap=3)
    results = list(stream)
    reached = {r.index for r in results if (r.mask != 255).any()}
    assert reached == {0, 1, 2, 3, 17, 18, 19, 20, 21, 22, 23}
    assert stream.describe()["unlabelled_frames"] == 33 - len(reached)


def test_fill_model_segments_the_frames_no_label_reaches(clip, tiny_model, tmp_path):
    from ovseg_cli import propagate_video
    from ovseg_cli.propagate.run import label_prompts, model_filler

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {0: truth[0]})
    fill = model_filler(tiny_model, label_prompts(NAMES, None), 64)
    stream = propagate_video(video, labels, max_gap=4, fill=fill)
    results = list(stream)
    info = stream.describe()
    # frame 5 is the first beyond reach: the model's, then an anchor for 4 more, and so on
    assert info["model_filled_frames"] == [5, 10, 15, 20, 25, 30]
    assert info["keyframe_indices"] == [0, 5, 10, 15, 20, 25, 30]
    assert info["unlabelled_frames"] == 0
    assert all(r.mask.max() < len(NAMES) for r in results)
    assert all(r.is_keyframe == (r.index % 5 == 0) for r in results)


def test_fill_model_takes_over_where_the_labels_mispredict_the_frame(tiny_model, tmp_path):
    """Without cut detection the first shot's labels would be warped onto the second: the
    warp mispredicts those frames, so the model segments them instead."""
    from ovseg_cli import propagate_video
    from ovseg_cli.propagate.run import label_prompts, model_filler

    video = joined_clips(tmp_path / "joined.mp4", first=10, second=10)
    labels = write_labels(tmp_path / "labels", {0: np.ones((64, 96), np.uint8)}, ["a", "b"])
    fill = model_filler(tiny_model, label_prompts(["a", "b"], None), 64)
    stream = propagate_video(video, labels, shot_threshold=0, fill=fill)
    results = list(stream)
    assert stream.describe()["model_filled_frames"] == list(range(10, 20))
    assert all((r.mask == 1).all() for r in results[:10])
    assert all(r.is_keyframe for r in results[10:])


def test_fill_model_from_the_command_line(clip, tiny_weights, tmp_path):
    video, truth = clip
    labels = write_labels(tmp_path / "labels", {0: truth[0]})
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "propagate", str(video), "--labels", str(labels), "--fill", "model", "--max-gap", "10",
        "--clip", "ovseg-tiny", "--pretrained", str(tiny_weights), "--size", "64",
        "--dense-method", "clearclip", "--masks", "--no-overlay", "--out", str(out), "-q",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["propagation"]["model_filled_frames"] == [11, 22]
    assert meta["model"] is not None
    assert meta["config"]["segment"]["dense_method"] == "clearclip"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("size", "the labels are 80x60, the video shapes.mov is 160x120"),
        ("past_end", "frame 40 is labelled, but shapes.mov has 33 frames"),
        # within what a container's estimate may be off by: found once the video is read
        ("just_past_end", "frame 33 is labelled, but shapes.mov has 33 frames (0 to 32)"),
        ("model_option", "--clip: model options apply only with --fill model"),
        ("nothing", "nothing to write"),
        ("no_labels", "no masks in it"),
        ("all_empty", "none of its 1 masks has a labelled pixel"),
        ("unknown_colour", "#0b0c0d"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(clip, tmp_path, case, expected):
    video, truth = clip
    masks = {0: truth[0]}
    extra: list[str] = []
    if case == "size":
        masks = {0: truth[0][::2, ::2].copy()}
    elif case == "past_end":
        masks = {0: truth[0], 40: truth[0]}
    elif case == "just_past_end":
        masks = {0: truth[0], 33: truth[0]}
    elif case == "model_option":
        extra = ["--clip", "ovseg-tiny"]
    elif case == "nothing":
        extra = ["--no-overlay"]
    labels = write_labels(tmp_path / "labels", masks)
    if case == "no_labels":
        for p in labels.glob("*.png"):
            p.unlink()
    elif case == "all_empty":
        Image.fromarray(np.full((H, W), 255, np.uint8), "L").save(labels / "frame_000000.png")
    elif case == "unknown_colour":
        rgb = np.array(COLORS, np.uint8)[truth[0]]
        rgb[5:9, 5:9] = (11, 12, 13)
        Image.fromarray(rgb).save(labels / "frame_000000.png")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["propagate", str(video), "--labels", str(labels), "--out", str(out), *extra]
    )
    line = one_line_error(res)
    assert expected in line
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def _peak_bytes(run) -> int:
    """Peak of the memory Python and numpy allocate while ``run`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_over_a_long_clip(tmp_path):
    """Four times the frames, the same memory: only a gap's frames are ever held."""
    from ovseg_cli import propagate_video

    peaks = {}
    for frames in (40, 160):
        video = make_video(tmp_path / f"clip{frames}.mp4", frames=frames, size=(192, 128))
        ones = np.ones((128, 192), np.uint8)
        labels = write_labels(tmp_path / f"labels{frames}", {i: ones for i in range(0, frames, 8)})

        def run(video=video, labels=labels) -> None:
            for _ in propagate_video(video, labels):
                pass

        run()  # warm up: caches and first imports are not the clip's
        peaks[frames] = _peak_bytes(run)
    # a dozen frames in flight at most (thread timing); the 120 frames more would be 10x that
    assert peaks[160] < peaks[40] + 12 * 192 * 128 * 3, peaks


def test_propagate_runs_without_torch(clip, tmp_path):
    """Label maps need no model: the whole command never imports torch (a quick start)."""
    import subprocess
    import sys

    video, truth = clip
    labels = write_labels(tmp_path / "labels", {0: truth[0], 8: truth[8]})
    code = (
        "import sys\n"
        "from ovseg_cli.cli import app\n"
        f"args = ['propagate', {str(video)!r}, '--labels', {str(labels)!r}, '--masks',"
        f" '--export', 'cvat,coco,stats', '--out', {str(tmp_path / 'out')!r}, '-q']\n"
        "try:\n"
        "    app(args)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "masks" / "000004.png").exists()
