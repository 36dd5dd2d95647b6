"""A person's sparse labels of a video, as annotation tools export them, for ``ovseg propagate``.

``read_labels(SRC)`` reads three formats:

- **a folder of PNG masks** named ``000123.png`` or ``frame_000123.png`` by frame (other files
  are ignored), or an ovseg run folder (its ``masks/``). Palette and greyscale PNGs hold class
  indices, 255 = unlabelled; RGB(A) PNGs class colours, black = unlabelled unless a class is
  black, transparent = unlabelled. Classes: ``labelmap.txt`` in the folder or its parent;
  for index masks line i is class i, a trailing black background line (ovseg's) excepted;
  for colour masks a black background line (CVAT's, first) is not a class;
- **a CVAT "Segmentation mask 1.1" zip**: its labelmap.txt and colour masks
  ``SegmentationClass/frame_NNNNNN.png`` (CVAT's frame numbers), read from the zip;
- **a COCO json** (``ovseg_cli.propagate.coco_labels``): ``categories`` in list order are
  the classes; an image's frame is its ``frame_index``, else the last number in its file
  name; RLE or polygons (an annotation without either, a box alone, labels nothing); pixels
  in no annotation are unlabelled and, where annotations overlap, the later one wins.

A classes file, when given, decides the classes: masks come out in its order and colours,
the labels' classes matched to its lines by name (without a labelmap, index masks use its
line i as class i, colour masks its colours).

Empty frames: a frame without a labelled pixel (a CVAT frame all black, which CVAT exports
for frames nobody annotated; a COCO image without annotations; a folder's PNG all
unlabelled) records no decision: it is no labelled frame unless ``empty_frames=True``, which
keeps it as one entirely 255. Telling this decodes each PNG once on opening (without the
class lookup); ``LabelSet.mask`` decodes a mask when asked.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovseg_cli.classes import RGB, UNLABELLED, colors_for, read_classes_file
from ovseg_cli.errors import OvsegError, did_you_mean
from ovseg_cli.exports.cvat import parse_labelmap

FORMATS = "a folder of PNG masks, a CVAT 'Segmentation mask 1.1' zip or a COCO json"
CVAT = "CVAT Segmentation mask 1.1 zip"
NO_NAMES = "no class names: put labelmap.txt beside the masks or pass --classes-file"
_FRAME_PNG = re.compile(r"^(?:frame_)?(\d+)\.png$", re.IGNORECASE)
MAX_MEMBER = 256 << 20  # bytes a zipped mask may unpack to: far above any frame's PNG
_BAD = (OSError, ValueError, EOFError, SyntaxError, RuntimeError, zipfile.BadZipFile, zlib.error)
Labels = list[tuple[str, RGB]]  # (name, colour) of each class of a source, in its order


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def _pack(rgb: np.ndarray) -> Any:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class _Lookup:
    """Decoded masks (P or L: class indices; RGB(A): colours) -> output class indices."""

    def __init__(self, labels: Labels, lut: np.ndarray, colour: bool, origin: str) -> None:
        self.count, self.lut, self.colour, self.origin = len(labels), lut, colour, origin
        table: dict[int, int] = {}
        for i, (name, color) in enumerate(labels if colour else []):
            key = int(_pack(np.array(color)))
            if key in table:  # a colour mask cannot tell these classes apart
                other = labels[list(table).index(key)][0]
                raise OvsegError(f"{origin}: {other!r} and {name!r} have the same colour")
            table[key] = int(lut[i])
        self.black_is_class = 0 in table
        table.setdefault(0, UNLABELLED)
        self.keys = np.array(sorted(table), np.uint32)
        self.values = np.array([table[k] for k in sorted(table)], np.uint8)

    def _check(self, img: Image.Image, where: str) -> None:
        if (img.mode in ("RGB", "RGBA")) != self.colour:  # a labelmap means one or the other
            kind = "an RGB" if self.colour else "a palette or greyscale"
            raise OvsegError(f"{where}: not {kind} mask as the first is: give masks of one kind")

    def labelled(self, img: Image.Image, where: str) -> bool:
        """Whether any pixel holds a class; cheap (in Pillow's C code, no class lookup)."""
        self._check(img, where)
        if not self.colour:
            return img.getextrema()[0] != UNLABELLED
        if img.mode == "RGB":
            return self.black_is_class or img.getbbox() is not None
        rgba = np.asarray(img).view("<u4")  # R, G, B, A bytes: A is the top byte
        seen = rgba >= 1 << 24
        return bool((seen if self.black_is_class else seen & (rgba & 0xFFFFFF != 0)).any())

    def apply(self, img: Image.Image, where: str) -> np.ndarray:
        """(H, W) uint8 output class indices; unknown values or colours are errors."""
        self._check(img, where)
        pixels = np.asarray(img)
        if not self.colour:
            bad = (pixels >= self.count) & (pixels != UNLABELLED)
            if bad.any():
                values, counts = np.unique(pixels[bad], return_counts=True)
                raise OvsegError(
                    f"{where}: pixel value {values[0]} ({counts[0]} pixels) is not a class: "
                    f"{self.origin} has {self.count} (0-{self.count - 1}; 255 = unlabelled)"
                )
            return self.lut[pixels]
        packed = _pack(pixels[..., :3].astype(np.uint32))
        pos = np.minimum(np.searchsorted(self.keys, packed), len(self.keys) - 1)
        known = self.keys[pos] == packed
        out = self.values[pos]
        if pixels.shape[2] == 4:
            clear = pixels[..., 3] == 0  # unpainted pixels of a drawing tool's layer
            known |= clear
            out[clear] = UNLABELLED
        if not known.all():
            colors, counts = np.unique(packed[~known], return_counts=True)
            top, more = int(np.argmax(counts)), len(colors) - 1
            raise OvsegError(
                f"{where}: colour #{int(colors[top]):06x} ({counts[top]} pixels)"
                f"{f' and {more} other colours' if more else ''} is not a class colour of "
                f"{self.origin}"
            )
        return out


def _image(src: Path | BinaryIO, where: str, *, decode: bool, colour: bool = False) -> Any:
    """A mask decoded (P, L, RGB or RGBA; ``colour``: RGB(A)), or its (mode, size) header."""
    try:
        with Image.open(src) as img:
            if not decode:
                return img.mode, img.size
            img.load()
            if colour and img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if img.has_transparency_data else "RGB")
            if img.mode not in ("P", "L", "RGB", "RGBA"):
                raise OvsegError(f"{where}: a {img.mode} image; masks are P, L, RGB or RGBA")
            return img
    except (*_BAD, Image.DecompressionBombError) as e:
        why = "no image format PIL knows" if isinstance(e, UnidentifiedImageError) else e
        raise OvsegError(f"{where}: not a readable image ({why})") from None


def _text(read: Callable[[], bytes], where: str) -> str:
    try:
        return read().decode("utf-8-sig")
    except (*_BAD, UnicodeDecodeError) as e:
        raise OvsegError(f"{where}: cannot be read as UTF-8 text ({e})") from None


def _classes(
    labels: Labels | None, classes_file: Any, where: str, colour: bool
) -> tuple[list[str], list[RGB], _Lookup]:
    """Output names and colours, and the lookup from the source's pixels to them."""
    specs = read_classes_file(classes_file) if classes_file is not None else None
    if labels is None:
        if specs is None:
            raise OvsegError(f"{where}: {NO_NAMES}")
        labels = list(zip([s.name for s in specs], colors_for(specs), strict=True))
    if not 0 < len(labels) <= UNLABELLED:
        raise OvsegError(f"{where}: {len(labels)} classes; masks hold 1 to {UNLABELLED}")
    keys = [_key(n) for n, _ in labels]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise OvsegError(f"{where}: class {twice!r} is named twice")
    names, colors, targets = [n for n, _ in labels], [c for _, c in labels], range(len(labels))
    if specs is not None:
        names, colors = [s.name for s in specs], colors_for(specs)
        index = {_key(n): j for j, n in enumerate(names)}
        for name, _ in labels:
            if _key(name) not in index:
                hint = did_you_mean(name, names)
                raise OvsegError(f"{where}: class {name!r} is not in {classes_file}{hint}")
        targets = [index[k] for k in keys]
    lut = np.full(256, UNLABELLED, np.uint8)
    lut[: len(labels)] = targets
    return names, colors, _Lookup(labels, lut, colour, where)


def _by_frame(items: Iterable[tuple[str, Any]], where: str, *, strict: bool) -> dict[int, Any]:
    """Frame index -> item, from names such as frame_000123.png; one item a frame."""
    frames: dict[int, Any] = {}
    for name, item in items:
        m = _FRAME_PNG.match(name)
        if m is None and strict:
            raise OvsegError(f"{where}: {item}: no frame number (CVAT names frames frame_NNNNNN)")
        if m is not None and int(m[1]) in frames:
            both = f"{Path(str(frames[int(m[1])])).name} and {Path(str(item)).name}"
            raise OvsegError(f"{where}: {both} are both frame {int(m[1])}")
        if m is not None:
            frames[int(m[1])] = item
    return frames


class _PngSource:
    """PNG masks by frame index: files of a folder, or members of a zip (CVAT's: colours)."""

    def __init__(self, frames: dict[int, Any], zf: zipfile.ZipFile | None = None) -> None:
        self.frames, self.zf = frames, zf
        self.names = {i: f"{zf.filename}: {f}" if zf else str(f) for i, f in frames.items()}

    def _file(self, index: int) -> Path | BinaryIO:
        if self.zf is None:
            return self.frames[index]
        size = self.zf.getinfo(self.frames[index]).file_size  # what reading it would hold
        if size > MAX_MEMBER:
            raise OvsegError(f"{self.names[index]}: unpacks to {size >> 20} MiB: not a mask")
        try:
            return io.BytesIO(self.zf.read(self.frames[index]))
        except _BAD as e:
            raise OvsegError(f"{self.names[index]}: cannot be read from the zip ({e})") from None

    def image(self, index: int) -> Image.Image:
        colour = self.zf is not None
        return _image(self._file(index), self.names[index], decode=True, colour=colour)

    def size(self, index: int) -> tuple[int, int]:
        return _image(self._file(index), self.names[index], decode=False)[1]

    def labelled(self, index: int, lookup: _Lookup) -> bool:
        return lookup.labelled(self.image(index), self.names[index])

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()


@dataclass
class LabelSet:
    """Sparse labels of one video: class names and colours, and masks of some frames."""

    names: list[str]  # class i's name; masks hold 0..len(names)-1 or 255 (unlabelled)
    colors: list[RGB]  # class i's RGB colour
    frames: list[int]  # the labelled frames (0 = the video's first), ascending, unique
    source: str  # the format read, for meta.json
    path: Path  # the SRC given
    _source: Any = field(repr=False, compare=False)  # a _PngSource or a coco_labels.CocoSource
    _lookup: _Lookup = field(repr=False, compare=False)
    _size: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)

    def mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 class indices (255 = unlabelled) of labelled frame ``index``."""
        if index not in self.frames:
            shown = ", ".join(map(str, self.frames[:8])) + (", ..." if len(self.frames) > 8 else "")
            raise OvsegError(f"{self.path}: frame {index} is not labelled (labelled: {shown})")
        img, where = self._source.image(index), self._source.names[index]
        _same_size(where, img.size, self.size())
        return self._lookup.apply(img, where)

    def size(self) -> tuple[int, int]:
        """(width, height) of the masks, read from the first labelled mask's header."""
        return self._size

    def describe(self) -> dict[str, Any]:
        """What meta.json records of these labels."""
        keys = ("source", "path", "frames", "classes")
        values = (self.source, str(self.path), list(self.frames), len(self.names))
        return dict(zip(keys, values, strict=True))

    def close(self) -> None:
        """Release the open zip, if any."""
        self._source.close()

    def __enter__(self) -> LabelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_size(where: str, size: tuple[int, int], first: tuple[int, int]) -> None:
    if size != first:
        raise OvsegError(
            f"{where}: {size[0]}x{size[1]}, but the first mask is {first[0]}x{first[1]}: "
            "all must be the video's size"
        )


def _finish(path: Path, source: str, src: Any, classes: tuple, empty_frames: bool) -> LabelSet:
    """The LabelSet of these masks less the empty ones, every mask's size checked."""
    names, colors, lookup = classes
    try:
        frames = [i for i in sorted(src.frames) if empty_frames or src.labelled(i, lookup)]
        if not frames:
            raise OvsegError(
                f"{path}: none of its {len(src.frames)} masks has a labelled pixel "
                "(frames without any count only when empty frames are asked for)"
            )
        first = src.size(frames[0])
        for i in frames[1:]:  # headers only: a wrong file is found before any work is done
            _same_size(src.names[i], src.size(i), first)
        return LabelSet(names, colors, frames, source, path, src, lookup, first)
    except BaseException:
        src.close()
        raise


def _read_folder(path: Path, classes_file: Any, empty_frames: bool) -> LabelSet:
    folder = path
    if not any(_FRAME_PNG.match(p.name) for p in path.iterdir()) and (path / "masks").is_dir():
        folder = path / "masks"  # an ovseg run folder
    entries = sorted(folder.iterdir())
    for p in entries:  # a mask's name on a broken link or a pipe: an error, not a skipped frame
        if _FRAME_PNG.match(p.name) and not p.is_file():
            raise OvsegError(f"{p}: not a readable file (a broken link, a folder or a pipe)")
    files = [(p.name, p) for p in entries if p.is_file()]
    frames = _by_frame(files, str(folder), strict=False)
    if not frames:
        raise OvsegError(f"{folder}: no masks in it (000123.png or frame_000123.png files)")
    first = frames[min(frames)]
    colour = _image(first, str(first), decode=False)[0] in ("RGB", "RGBA")
    maps = [p / "labelmap.txt" for p in (folder, folder.parent) if (p / "labelmap.txt").is_file()]
    labelmap, labels = (maps or [None])[0], None
    if labelmap is not None:
        labels = parse_labelmap(
            _text(labelmap.read_bytes, str(labelmap)), str(labelmap), colour=colour
        )
    where = str(labelmap or classes_file or folder)
    classes = _classes(labels, classes_file, where, colour)
    return _finish(path, "mask folder", _PngSource(frames), classes, empty_frames)


def _mac_extra(member: str) -> bool:
    """A file macOS adds when it zips a folder (resource forks): no part of an export."""
    return member.startswith("__MACOSX/") or member.rsplit("/", 1)[-1].startswith("._")


def _read_cvat(path: Path, classes_file: Any, empty_frames: bool) -> LabelSet:
    try:
        zf = zipfile.ZipFile(path)
    except _BAD as e:
        raise OvsegError(f"{path}: not a {CVAT} ({e})") from None
    try:
        members = [m for m in zf.namelist() if not (m.endswith("/") or _mac_extra(m))]
        tops = {m.split("/", 1)[0] + "/" for m in members}
        # some exports pack everything in one folder
        prefix = "" if "labelmap.txt" in members else tops.pop() if len(tops) == 1 else ""
        if f"{prefix}labelmap.txt" not in members:
            raise OvsegError(f"{path}: not a {CVAT} (no labelmap.txt)")
        folder = f"{prefix}SegmentationClass/"
        pngs = [m for m in members if m.startswith(folder) and m.lower().endswith(".png")]
        masks = _by_frame([(m.removeprefix(folder), m) for m in pngs], str(path), strict=True)
        if not masks:
            raise OvsegError(f"{path}: not a {CVAT} (no SegmentationClass/ masks)")
        where = f"{path}: {prefix}labelmap.txt"
        text = _text(lambda: zf.read(f"{prefix}labelmap.txt"), where)
        classes = _classes(parse_labelmap(text, where, colour=True), classes_file, where, True)
    except BaseException:
        zf.close()
        raise
    return _finish(path, CVAT, _PngSource(masks, zf), classes, empty_frames)


def _read_coco(path: Path, data: dict, classes_file: Any, empty_frames: bool) -> LabelSet:
    from ovseg_cli.propagate.coco_labels import read_coco

    labels, source = read_coco(path, data)
    classes = _classes(labels, classes_file, str(path), colour=False)
    return _finish(path, "COCO json", source, classes, empty_frames)


def read_labels(
    src: str | Path, classes_file: str | Path | None = None, *, empty_frames: bool = False
) -> LabelSet:
    """Open sparse labels: a mask folder, a CVAT 'Segmentation mask 1.1' zip or a COCO json."""
    path = Path(src)
    if not path.exists():
        raise OvsegError(f"labels not found: {path}")
    try:
        if path.is_dir():
            return _read_folder(path, classes_file, empty_frames)
        if not path.is_file():  # a pipe or a device would block or never end
            raise OvsegError(f"{path}: not a file or a folder")
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise OvsegError(f"{path}: cannot be read ({e})") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first bytes (an empty one's too)
        return _read_cvat(path, classes_file, empty_frames)
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        try:
            data = json.loads(_text(path.read_bytes, str(path)))
        except json.JSONDecodeError as e:
            raise OvsegError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
        except RecursionError:
            raise OvsegError(f"{path}: JSON nested too deeply to be labels") from None
        if all(isinstance(data.get(k), list) for k in ("images", "annotations")):
            return _read_coco(path, data, classes_file, empty_frames)
    raise OvsegError(f"{path}: not sparse labels ovseg can read; give {FORMATS}")
