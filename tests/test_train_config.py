"""The training config: nested YAML, --set, suggestions, what a resume may change."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovseg_cli.errors import OvsegError
from ovseg_cli.train.config import (
    TrainConfig,
    config_differences,
    parse_assignments,
    resolve_train_config,
)


def test_defaults_follow_the_paper() -> None:
    cfg = TrainConfig()
    assert cfg.optim.lr == 3e-6 and cfg.optim.weight_decay == 1e-2
    assert cfg.optim.warmup_steps == 1500 and cfg.optim.steps == 100_000
    assert cfg.data.batch == 4 and cfg.model.gaps == (9, 6, 3)
    assert cfg.loss.alpha == cfg.loss.beta == 1.0


def test_yaml_set_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1.0e-4\n  steps: 50\nmodel:\n  dim: 64\n")
    cfg = resolve_train_config(
        None, f, ["optim.lr=2e-4", "data.crop=[64, 96]"], {"run.max_steps": 7}
    )
    assert cfg.optim.lr == 2e-4 and cfg.optim.steps == 50 and cfg.model.dim == 64
    assert cfg.data.crop == (64, 96) and cfg.total_steps == 7


@pytest.mark.parametrize(
    ("text", "sets", "message"),
    [
        ("optim:\n  lrr: 1\n", [], r"unknown setting 'optim\.lrr'.*did you mean 'lr'"),
        ("optimizer:\n  lr: 1\n", [], r"unknown setting 'optimizer'.*did you mean 'optim'"),
        ("", ["optim.lrr=1"], r"no setting 'lrr' in optim.*did you mean 'lr'"),
        ("", ["optim"], "expected key=value"),
        ("", ["optim.lr.x=1"], "is not a section"),
        ("", ["data.crop=[100, 100]"], "multiples of 32"),
        ("", ["optim.schedule=cosin"], "did you mean 'cosine'"),
        ("", ["data.batch=0"], "data.batch must be at least 1"),
    ],
)
def test_bad_settings(tmp_path: Path, text: str, sets: list[str], message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(OvsegError, match=message):
        resolve_train_config(None, f, sets)


def test_assignments_are_yaml_values() -> None:
    assert parse_assignments(["c=[1, 2]", "d=true", "e=hello"]) == [
        ("c", [1, 2]), ("d", True), ("e", "hello"),
    ]  # fmt: skip
    # YAML 1.1 reads 1e-3 as text; the setting's type makes it a number
    assert resolve_train_config(None, None, ["optim.lr=1e-3"]).optim.lr == 1e-3


def test_differences() -> None:
    a = TrainConfig()
    b = resolve_train_config(None, None, ["optim.lr=1e-5", "run.max_steps=9"])
    assert config_differences(a, b) == ["optim.lr: 3e-06 -> 1e-05", "run.max_steps: None -> 9"]
    assert config_differences(a, b, ignore=["run.max_steps"]) == ["optim.lr: 3e-06 -> 1e-05"]
