"""The references' evaluation protocols as settings: windows, PAMR, eval config files, and the
labelled frames alone (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_factory import make_folder
from typer.testing import CliRunner
from video_factory import make_video

from ovseg_cli.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def _tiny(weights: Path) -> list[str]:
    return ["--clip", "ovseg-tiny", "--pretrained", str(weights)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ovseg_cli.datasets import prepare

    base = tmp_path_factory.mktemp("protocols")
    return prepare("folder", make_folder(base / "raw", frames=9), base / "prepared").out_dir


def test_windows_and_pamr_end_to_end(tmp_path: Path, tiny_weights: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=3, size=(96, 64))
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["segment", str(video), "-c", "road,sky", "--window", "32", "--stride", "16",
              "--refine", "pamr", "--size", "64", "--masks", "-o", str(out), "-q",
              *_tiny(tiny_weights)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    model = json.loads((out / "meta.json").read_text())["model"]
    assert (model["window"], model["stride"], model["refine"]) == (32, 16, "pamr")
    assert len(list((out / "masks").glob("*.png"))) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stride", "16"], "stride needs window"),
        (["--refine", "crf"], "refine must be one of none, pamr"),
        (["--dense-method", "maskclip"], "'maskclip' was split"),
    ],
)
def test_protocol_settings_refused(tmp_path: Path, tiny_weights, args, message) -> None:
    video = make_video(tmp_path / "v.mp4", frames=2)
    res = runner.invoke(app, ["segment", str(video), "-c", "a,b", *args, *_tiny(tiny_weights)])
    assert res.exit_code == 2 and message in res.output, res.output


def test_window_with_a_checkpoint_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=2)
    res = runner.invoke(
        app, ["segment", str(video), "-c", "a,b", "--checkpoint", str(tiny_checkpoint),
              "--window", "64"],
    )  # fmt: skip
    assert res.exit_code == 2 and "apply to the training-free segmenter" in res.output


def test_example_eval_configs_are_valid() -> None:
    from ovseg_cli.cli.eval import SECTIONS
    from ovseg_cli.config import EvalConfig, SegmentConfig
    from ovseg_cli.config_io import from_mapping, load_sections

    files = sorted(EXAMPLES.glob("eval-*-cityscapes.yaml"))
    assert len(files) == 4
    for f in files:
        sections = load_sections(f, SECTIONS)
        ev = from_mapping(EvalConfig, sections["eval"], source=str(f))
        seg = from_mapping(SegmentConfig, sections["segment"], source=str(f))
        assert (ev.size, ev.unlabelled, seg.window, seg.stride) == (560, False, 224, 112)
        assert seg.templates == "imagenet" and not seg.temporal
        assert f.name == f"eval-{seg.dense_method}-cityscapes.yaml"


def test_eval_config_file_and_labelled_frames_alone(
    tmp_path: Path, prepared: Path, tiny_weights: Path
) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        "eval: {split: all, data_split: train, unlabelled: false, vc: [2]}\n"
        "segment: {window: 32, stride: 16, temporal: false, shot_threshold: 0}\n"
    )
    res = runner.invoke(
        app, ["eval", "--data", str(prepared), "--config", str(config), "-o",
              str(tmp_path / "r"), "-q", *_tiny(tiny_weights)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["frames"] == report["labelled_frames"] == 3  # 'walk': frames 1, 4, 7 labelled
    assert report["model"]["window"] == 32
    config.write_text("evaluation: {split: all}\n")
    res = runner.invoke(app, ["eval", "--data", str(prepared), "--config", str(config)])
    assert res.exit_code == 2 and "unknown section 'evaluation'" in res.output
