"""The image tower in ONNX Runtime: agreement with torch for every dense method at sizes other
than the traced one, and the export cache (reuse, damage, staleness, external weights)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ovseg_cli.clip.dense import DENSE_METHODS, DenseClipEncoder
from ovseg_cli.clip.loading import load_clip
from ovseg_cli.errors import OvsegError
from ovseg_cli.runtime import export_listener, onnx_encoder
from ovseg_cli.runtime import onnx_export as export_mod
from ovseg_cli.runtime.onnx_cache import ENTRY_FILE, MODEL_FILE, GraphCache, graph_key
from ovseg_cli.runtime.onnx_session import onnx_threads


@pytest.fixture(autouse=True)
def _auto_means_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here `auto` is what users get, not the test suite's torch (see conftest.py)."""
    monkeypatch.delenv("OVSEG_RUNTIME", raising=False)


TOLERANCE = 1e-4
SIZES = [(1, 48, 120), (2, 72, 40)]  # grids 6x15 and 9x5: neither native (8x8) nor traced (5x7)


@pytest.fixture(scope="module")
def visual():
    return load_clip("ovseg-tiny", "none").visual


@pytest.fixture
def cache_dir(onnx_cache_dir: Path) -> Path:
    """The session's cache (conftest): each method is exported once and reused by later tests."""
    return onnx_cache_dir


def load(encoder, cache: Path, layers=()):
    """(ONNX encoder, export messages seen while loading it)."""
    seen: list[str] = []
    with export_listener(seen.append):
        onx = onnx_encoder(encoder, "ovseg-tiny", layers, cache_dir=cache)
    return onx, seen


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("method", sorted(DENSE_METHODS))
def test_every_method_matches_torch_at_two_sizes_from_one_export(visual, cache_dir, method):
    enc = DenseClipEncoder(visual, method).eval()
    gh, gw = export_mod.EXAMPLE_GRID
    with torch.no_grad():
        # shape-keyed caches (pos embeddings, NACLIP's prior) holding the traced grid must
        # not freeze it into the graph
        enc(torch.randn(2, 3, 8 * gh, 8 * gw))
    onx, _ = load(enc, cache_dir)
    for batch, h, w in SIZES:
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.no_grad():
            ref = enc(x).embeddings
        got = onx(x).embeddings
        assert got.shape == (batch, 64, h // 8, w // 8)
        assert max_diff(got, ref) <= TOLERANCE, (method, h, w, max_diff(got, ref))
    # the references' sliding windows run on top of the ONNX forward unchanged (7x7-patch
    # windows: on 4x4, SC-CLIP's discrete cuts make torch itself flip under 1e-6 of noise)
    from ovseg_cli.clip.sliding import slide_logits

    x = torch.randn(1, 3, 56, 112, generator=torch.Generator().manual_seed(7))
    text = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    with torch.no_grad():
        ref = slide_logits(enc, x, text, 56, 28)
    assert max_diff(slide_logits(onx, x, text, 56, 28), ref) <= TOLERANCE


def test_a_graph_that_disagrees_with_torch_is_refused_not_cached(visual, tmp_path, monkeypatch):
    """A graph that computes something else than torch (here: a traced grid baked in where
    the positional embedding should follow the input) must be caught by the check."""

    class BakedGrid(export_mod.ImageTower):
        def forward(self, images):
            gh, gw = export_mod.EXAMPLE_GRID
            pos = self.encoder.positional_embedding
            with monkeypatch.context() as m:  # the example grid's table, whatever the input
                table = pos((gh, gw)).detach()
                m.setattr(
                    self.encoder,
                    "positional_embedding",
                    lambda grid: table[: 1 + grid[0] * grid[1]],
                )
                return super().forward(images)

    monkeypatch.setattr(export_mod, "ImageTower", BakedGrid)
    enc = DenseClipEncoder(visual, "clearclip").eval()
    gh, gw = export_mod.EXAMPLE_GRID
    with torch.no_grad():
        enc(torch.randn(2, 3, 8 * gh, 8 * gw))
    with pytest.raises(OvsegError, match="does not match torch"):
        load(enc, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing cached, no temporary left


def test_second_load_uses_the_cache(visual, cache_dir):
    enc = DenseClipEncoder(visual, "clearclip").eval()
    first, _ = load(enc, cache_dir)
    second, seen = load(enc, cache_dir)
    assert seen == [] and second.info["exported"] is False
    assert second.info["graph"] == first.info["graph"]
    assert second.info["threads"] == onnx_threads()
    # the stand-in keeps the encoder's settings as they are (a tuple stays a tuple)
    assert (second.method, second.patch, second.native_grid) == ("clearclip", 8, (8, 8))
    x = torch.randn(1, 3, 40, 88)
    assert torch.equal(first(x).embeddings, second(x).embeddings)


def test_a_damaged_model_file_is_rebuilt(visual, cache_dir, tmp_path, caplog):
    enc = DenseClipEncoder(visual, "clearclip").eval()
    good, _ = load(enc, cache_dir)
    shutil.copytree(cache_dir / good.info["graph"], tmp_path / good.info["graph"])
    model = tmp_path / good.info["graph"] / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still a valid protobuf
    model.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        rebuilt, seen = load(enc, tmp_path)
    assert len(seen) == 1 and rebuilt.info["exported"] is True
    assert "does not match its checksum" in caplog.text
    x = torch.randn(1, 3, 56, 40)
    with torch.no_grad():
        assert max_diff(rebuilt(x).embeddings, enc(x).embeddings) <= TOLERANCE
    _, again = load(enc, tmp_path)  # the rebuilt entry is whole
    assert again == []


def _damage_truncate(folder: Path) -> None:
    path = folder / MODEL_FILE
    path.write_bytes(path.read_bytes()[:1000])


def _damage_entry(folder: Path) -> None:
    (folder / ENTRY_FILE).write_text("{not json", encoding="utf-8")


def _damage_missing(folder: Path) -> None:
    (folder / MODEL_FILE).unlink()


def _damage_same_size(folder: Path) -> None:
    path = folder / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-5:] = b"xxxxx"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_damage_truncate, "wrong size"),
        (_damage_entry, "no readable"),
        (_damage_missing, "missing"),
        (_damage_same_size, "checksum"),
    ],
)
def test_damaged_entries_are_never_trusted(visual, cache_dir, tmp_path, caplog, damage, reason):
    enc = DenseClipEncoder(visual, "clearclip").eval()
    good, _ = load(enc, cache_dir)
    key = graph_key(enc, "ovseg-tiny", ())
    shutil.copytree(cache_dir / good.info["graph"], tmp_path / good.info["graph"])
    cache = GraphCache(tmp_path)
    assert cache.load(key) is not None
    damage(tmp_path / good.info["graph"])
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        assert cache.load(key) is None
    assert reason in caplog.text


def test_stale_keys_are_not_reused(visual, cache_dir, tmp_path, caplog):
    enc = DenseClipEncoder(visual, "clearclip").eval()
    good, _ = load(enc, cache_dir)
    key = graph_key(enc, "ovseg-tiny", ())
    changed = copy.deepcopy(visual)
    with torch.no_grad():
        changed.ln_post.weight[0] += 1e-3  # one weight, nothing else
    others = {
        "method": graph_key(DenseClipEncoder(visual, "sclip"), "ovseg-tiny", ()),
        "weights": graph_key(DenseClipEncoder(changed, "clearclip"), "ovseg-tiny", ()),
        "layers": graph_key(enc, "ovseg-tiny", (1,)),
    }
    for what, other in others.items():
        assert other[what] != key[what]
        assert GraphCache(cache_dir).folder(other) != GraphCache(cache_dir).folder(key)
    # an entry found under a key's folder but written for another key is refused
    stale = others["weights"]
    folder = GraphCache(tmp_path).folder(stale)
    shutil.copytree(cache_dir / good.info["graph"], folder)
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        assert GraphCache(tmp_path).load(stale) is None
    assert "another model" in caplog.text


def test_an_upgrade_replaces_its_entries_and_leaves_other_models_alone(tmp_path) -> None:
    """Entries of the same graph from older code are removed when the new one is written."""
    cache = GraphCache(tmp_path)
    base = {"format": 1, "arch": "a", "method": "clearclip", "weights": "w1", "code": "c1"}
    keys = {
        "old code": base,
        "other weights": {**base, "weights": "w2"},
        "other method": {**base, "method": "sclip"},
    }
    for key in keys.values():
        with cache.writing(key) as tmp:
            (tmp / MODEL_FILE).write_bytes(b"graph")
    assert all(cache.load(k) is not None for k in keys.values())
    with cache.writing({**base, "code": "c2"}) as tmp:
        (tmp / MODEL_FILE).write_bytes(b"graph")
    assert cache.load(keys["old code"]) is None
    assert cache.load(keys["other weights"]) is not None
    assert cache.load(keys["other method"]) is not None
    assert cache.load({**base, "code": "c2"}) is not None
    assert len(list(tmp_path.iterdir())) == 3  # no temporary folder left behind


def test_the_key_tells_quick_gelu_from_gelu(visual) -> None:
    """OpenAI's weights run with QuickGELU: same weight shapes, another graph."""
    import open_clip

    quick = open_clip.create_model("ovseg-tiny", force_quick_gelu=True).visual
    quick.load_state_dict(visual.state_dict())
    a = graph_key(DenseClipEncoder(visual, "clearclip"), "ovseg-tiny", ())
    b = graph_key(DenseClipEncoder(quick, "clearclip"), "ovseg-tiny", ())
    assert a["weights"] == b["weights"] and a["structure"] != b["structure"]


def test_weights_over_the_protobuf_limit_go_to_external_data(visual, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # as if the tower were > 2 GB
    enc = DenseClipEncoder(visual, "value").eval()
    onx, seen = load(enc, tmp_path)
    folder = tmp_path / onx.info["graph"]
    entry = json.loads((folder / ENTRY_FILE).read_text())
    assert len(seen) == 1 and len(entry["files"]) == 2  # the graph and its weights
    again, seen = load(enc, tmp_path)
    assert seen == []
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert max_diff(again(x).embeddings, enc(x).embeddings) <= TOLERANCE
    weights = next(folder / n for n in entry["files"] if n != MODEL_FILE)
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    assert GraphCache(tmp_path).load(graph_key(enc, "ovseg-tiny", ())) is None


def test_intermediate_blocks_are_exported_for_the_backbone(visual, cache_dir):
    enc = DenseClipEncoder(visual, "clearclip").eval()
    onx, _ = load(enc, cache_dir, layers=(0, -2))  # read as blocks 0 and 1, like forward does
    assert onx.layers == (0, 1)
    x = torch.randn(2, 3, 48, 72)
    with torch.no_grad():
        ref = enc(x, intermediate_layers=(0, 1))
    got = onx(x, intermediate_layers=(1, 0))
    assert len(got.intermediates) == 2
    for a, b in zip(got.intermediates, ref.intermediates, strict=True):
        assert a.shape == (2, 64, 6, 9) and max_diff(a, b) <= TOLERANCE
    with pytest.raises(ValueError, match="reads blocks"):
        onx(x, intermediate_layers=(2,))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scclip"])  # every method runs on the tiny CLIP above
def test_vit_b16_matches_torch_at_two_sizes(method, tmp_path):
    visual = load_clip("ViT-B-16", "none").visual
    enc = DenseClipEncoder(visual, method).eval()
    onx = onnx_encoder(enc, "ViT-B-16", cache_dir=tmp_path)
    for batch, h, w in [(1, 224, 224), (2, 224, 400)]:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            ref = enc(x).embeddings
        assert max_diff(onx(x).embeddings, ref) <= TOLERANCE


# --- hostile input: thread counts, unwritable caches, entries holding another graph ---


def test_huge_onnx_threads_are_capped_at_the_usable_cores(visual, cache_dir, monkeypatch, caplog):
    """OVSEG_ONNX_THREADS=100000 crashed ONNX Runtime (segfault, no message): far more threads
    than cores reach the session as the usable cores, with a warning naming the variable."""
    from ovseg_cli.runtime import onnx_session

    monkeypatch.setattr(onnx_session.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setenv("OVSEG_ONNX_THREADS", "64")  # 64 on 1 core: few enough for old code
    enc = DenseClipEncoder(visual, "clearclip").eval()
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        onx, _ = load(enc, cache_dir)
    assert onx.info["threads"] == 1
    assert "OVSEG_ONNX_THREADS=64 is more than 4 threads" in caplog.text
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        direct = onnx_encoder(enc, "ovseg-tiny", threads=100, cache_dir=cache_dir)
    assert direct.info["threads"] == 1 and "threads=100 is more" in caplog.text


def _make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` and everything in it read-only, as on a read-only file system.

    chmod does it for a normal user; root ignores the mode, so there creating a folder under
    it fails as a read-only mount makes it fail (EROFS). Every write of the cache starts by
    creating a folder (its root, or an entry's temporary folder), so none can succeed."""
    import errno
    import os

    for path in [*folder.rglob("*"), folder]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        (folder / ".probe").mkdir()
    except PermissionError:
        return  # the mode holds: a real read-only folder
    (folder / ".probe").rmdir()
    real_mkdir, real_path_mkdir = os.mkdir, Path.mkdir

    def refuse(path) -> None:
        if Path(path).is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkdir(path, mode=0o777, *, dir_fd=None):
        refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    def path_mkdir(self, mode=0o777, parents=False, exist_ok=False):
        refuse(self)  # Python 3.10's pathlib holds its own reference to os.mkdir
        return real_path_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(Path, "mkdir", path_mkdir)


@pytest.fixture
def writable_again(tmp_path: Path):
    """Give the test's folders their modes back, so that pytest can remove them."""
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755)


def _place(visual, requested: str):
    """place_encoder on the tiny CLIP as segment does it: the cache comes from OVSEG_CACHE_DIR."""
    from ovseg_cli.runtime import place_encoder

    enc = DenseClipEncoder(visual, "clearclip").eval()
    seen: list[str] = []
    with export_listener(seen.append):
        placed, runtime = place_encoder(enc, "ovseg-tiny", requested, torch.device("cpu"), "fp32")
    assert seen == []  # refused before an export (a minute for ViT-B-16) is started
    return enc, placed, runtime


def _check_unwritable_cache(visual, folder: Path, caplog) -> None:
    """Under auto: torch, with one warning line naming the folder; under onnx: one-line error."""
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        enc, placed, runtime = _place(visual, "auto")
    assert placed is enc and runtime == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert str(folder) in warnings[0] and "runs in torch instead" in warnings[0]
    with pytest.raises(OvsegError, match="use --runtime torch") as err:
        _place(visual, "onnx")
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert "OVSEG_CACHE_DIR" in str(err.value)


@pytest.mark.parametrize("layout", ["empty", "with its onnx folder"])
def test_read_only_cache_dir_falls_back_to_torch_under_auto(
    visual, tmp_path, monkeypatch, caplog, writable_again, layout
):
    """On a read-only file system the cache was an internal OSError even under auto."""
    cache = tmp_path / "read-only"
    (cache / "onnx" if layout != "empty" else cache).mkdir(parents=True)
    _make_read_only(cache, monkeypatch)
    monkeypatch.setenv("OVSEG_CACHE_DIR", str(cache))
    _check_unwritable_cache(visual, cache, caplog)
    assert sorted(p.name for p in cache.rglob("*")) == ([] if layout == "empty" else ["onnx"])


def test_a_read_only_cache_holding_the_entry_is_used(
    visual, cache_dir, tmp_path, monkeypatch, writable_again
):
    """Nothing needs writing when the entry is there: a shared read-only cache works."""
    enc = DenseClipEncoder(visual, "clearclip").eval()
    good, _ = load(enc, cache_dir)
    shared = tmp_path / "shared"
    shutil.copytree(cache_dir / good.info["graph"], shared / "onnx" / good.info["graph"])
    _make_read_only(shared, monkeypatch)
    monkeypatch.setenv("OVSEG_CACHE_DIR", str(shared))
    _, placed, runtime = _place(visual, "onnx")
    assert runtime == "onnx" and placed.info["exported"] is False


def test_cache_dir_that_is_a_file_falls_back_to_torch_under_auto(
    visual, tmp_path, monkeypatch, caplog
):
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("OVSEG_CACHE_DIR", str(not_a_folder))
    _check_unwritable_cache(visual, not_a_folder, caplog)
    with pytest.raises(OvsegError, match="is a file, not a folder"):
        _place(visual, "onnx")
    assert not_a_folder.read_text() == "not a folder"


@pytest.mark.parametrize(("runtime", "code"), [("auto", 0), ("onnx", 2)])
def test_cache_dir_that_is_a_file_from_the_cli(
    tmp_path, small_video, tiny_weights, monkeypatch, caplog, runtime, code
):
    """`ovseg segment`: a warning and a torch run under auto, one error line and exit 2 under
    onnx (it was an internal NotADirectoryError, exit 1, under both)."""
    from typer.testing import CliRunner

    from ovseg_cli.cli import app

    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("OVSEG_CACHE_DIR", str(not_a_folder))
    out = tmp_path / "out"
    args = ["segment", str(small_video), "--classes", "road,sky", "-o", str(out)]
    args += ["--clip", "ovseg-tiny", "--pretrained", str(tiny_weights), "--runtime", runtime]
    caplog.set_level(logging.WARNING, logger="ovseg")  # the CLI shows the library's warnings
    res = CliRunner().invoke(app, args)
    assert res.exit_code == code, res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if str(not_a_folder) in line]
    assert len(lines) == 1, res.output
    if code:
        assert lines[0].startswith("error: ") and not out.exists()
    else:
        assert lines[0].startswith("warning: ")
        assert json.loads((out / "meta.json").read_text())["model"]["runtime"] == "torch"


def _other_method_graph(visual, cache_dir: Path, scratch: Path) -> Path:
    other, _ = load(DenseClipEncoder(visual, "sclip").eval(), cache_dir)
    return cache_dir / other.info["graph"] / MODEL_FILE


def _other_outputs_graph(visual, cache_dir: Path, scratch: Path) -> Path:
    other, _ = load(DenseClipEncoder(visual, "clearclip").eval(), cache_dir, layers=(0, 1))
    return cache_dir / other.info["graph"] / MODEL_FILE


def _not_a_graph(visual, cache_dir: Path, scratch: Path) -> Path:
    path = scratch / "not-a-graph.onnx"
    path.write_bytes(b"these bytes are no ONNX model")
    return path


@pytest.mark.parametrize(
    ("replacement", "reason"),
    [
        (_other_method_graph, "exported for another model"),
        (_other_outputs_graph, "its graph outputs"),
        (_not_a_graph, "ONNX Runtime cannot load"),
    ],
)
def test_cache_entry_holding_another_valid_graph_is_rebuilt(
    visual, cache_dir, tmp_path, caplog, replacement, reason
):
    """An entry whose model file was swapped for another graph, with entry.json's size and
    SHA-256 rewritten to match, passes the checksums: it was a RuntimeError on every run
    (other outputs), or silently ran another method (same outputs). Now it is rebuilt."""
    enc = DenseClipEncoder(visual, "clearclip").eval()
    good, _ = load(enc, cache_dir)
    folder = tmp_path / good.info["graph"]
    shutil.copytree(cache_dir / good.info["graph"], folder)
    data = replacement(visual, cache_dir, tmp_path).read_bytes()
    (folder / MODEL_FILE).write_bytes(data)
    entry = json.loads((folder / ENTRY_FILE).read_text())
    entry["files"][MODEL_FILE] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ENTRY_FILE).write_text(json.dumps(entry))
    assert GraphCache(tmp_path).load(graph_key(enc, "ovseg-tiny", ())) is not None  # sums pass
    with caplog.at_level(logging.WARNING, logger="ovseg"):
        rebuilt, seen = load(enc, tmp_path)
    assert len(seen) == 1 and rebuilt.info["exported"] is True
    assert "is unusable" in caplog.text and reason in caplog.text
    x = torch.randn(1, 3, 56, 40)
    with torch.no_grad():
        assert max_diff(rebuilt(x).embeddings, enc(x).embeddings) <= TOLERANCE
    again, seen = load(enc, tmp_path)  # the rebuilt entry replaced the swapped one
    assert seen == [] and again.info["graph"] == good.info["graph"]
