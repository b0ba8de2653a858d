"""Images in the canonical space (C×H×W float32 in [0, 1] at the model's resolution), and foregrounds."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .files import regular_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
#: Pillow modes of more than 8 bits per pixel, read as numbers rather than converted (which clips).
DEEP_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
#: The largest image or .npy file read (an analysis resizes to the model's resolution anyway).
MAX_IMAGE_BYTES = 1 << 30
MAX_CSV_BYTES = 64 << 20


@dataclass(frozen=True)
class CanonicalImage:
    """One image ready for analysis, and the size of the file it came from (for boxes)."""

    name: str  # the file name, as matched by a boxes CSV
    pixels: np.ndarray  # (C, H, W) float32 in [0, 1]
    original_size: tuple[int, int]  # (height, width) of the file


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image and .npy files, sorted by name."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
            if not files:
                raise InputError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))} or .npy)")
            found.extend(regular_file(p, "image", MAX_IMAGE_BYTES) for p in files)
        else:
            found.append(regular_file(path, "image", MAX_IMAGE_BYTES))
    if not found:
        raise InputError("no images given; pass image files, a folder of images or .npy arrays")
    return found


def load_images(paths: Sequence[Path], shape: tuple[int, int, int]) -> list[CanonicalImage]:
    """Read every path and resize it to `shape` = (C, H, W)."""
    return [load_image(path, shape) for path in paths]


def load_image(path: Path, shape: tuple[int, int, int]) -> CanonicalImage:
    """One image at its full bit depth (8- or 16-bit, float in [0, 1]), resized to `shape`."""
    channels, height, width = shape
    regular_file(path, "image", MAX_IMAGE_BYTES)
    if path.suffix.lower() == ".npy":
        array = _read_npy(path, channels)
        original = array.shape[1:]
        pixels = _resize_array(array, height, width)
    else:
        if channels not in MODES:
            raise InputError(
                f"the model takes {channels} channels; image files give 1, 3 or 4 — pass .npy arrays instead"
            )
        pixels, original = _read_image(path, channels, height, width)
    return CanonicalImage(path.name, np.ascontiguousarray(pixels, dtype=np.float32), tuple(original))


def _read_image(path: Path, channels: int, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(C, H, W) float32 in [0, 1] at the model's size, and the file's (height, width). 16-bit
    and 32-bit integer images are scaled by 65535 (values above refused), float images must lie in
    [0, 1]; 8-bit images go through Pillow's conversion and resizing."""
    try:
        with Image.open(path) as image:
            image.load()
            original = (image.height, image.width)
            if image.mode in DEEP_MODES:
                plane = _deep_plane(path, np.asarray(image), image.mode)
                return _resize_array(_as_channels(plane, channels), height, width), original
            converted = image.convert(MODES[channels]).resize((width, height), Image.Resampling.BILINEAR)
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: too large to decode safely ({err}); downscale the image") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(
            f"{path}: cannot read it as an image ({type(err).__name__}); give a PNG, JPEG, BMP or TIFF"
        ) from None
    array = np.asarray(converted, dtype=np.float32) / 255.0
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), original


def _deep_plane(path: Path, array: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        values = array.astype(np.float32)
        _check_unit_range(path, values, "float")
        return values
    values = array.astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(
            f"{path}: integer pixel values {values.min():.0f}..{values.max():.0f} are outside 0..65535; "
            "save it as an 8- or 16-bit image"
        )
    return (values / 65535.0).astype(np.float32)


def _as_channels(plane: np.ndarray, channels: int) -> np.ndarray:
    """A grey plane as the model's channels (alpha opaque), as Pillow converts an 8-bit grey image."""
    planes = [plane] * min(channels, 3) + ([np.ones_like(plane)] if channels == 4 else [])
    return np.stack(planes)


def _check_unit_range(path: Path, values: np.ndarray, kind: str) -> None:
    if values.size == 0:
        raise InputError(f"{path}: the image has no pixels")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: {kind} values must be finite (found NaN or infinity); clean the image")
    if values.min() < 0 or values.max() > 1:
        raise InputError(
            f"{path}: {kind} values must lie in [0, 1] (found {values.min():.3g}..{values.max():.3g}); rescale it"
        )


def _read_npy(path: Path, channels: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: holds several arrays (an .npz archive); save one array with numpy.save")
    given = array.shape
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(2, 0, 1)  # H×W×C
    elif array.ndim != 3:
        raise InputError(f"{path}: array of shape {given}; give H×W, C×H×W or H×W×C")
    if array.size == 0:
        raise InputError(f"{path}: array of shape {given} has no pixels")
    if array.shape[0] != channels:
        raise InputError(f"{path}: has {array.shape[0]} channels but the model takes {channels}; convert the array")
    return _unit_values(path, array)


def _unit_values(path: Path, array: np.ndarray) -> np.ndarray:
    """An array's values in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, floats as they are."""
    kind = array.dtype.kind
    if kind == "c":
        raise InputError(f"{path}: complex values ({array.dtype}); give a real array")
    if kind == "b":
        return array.astype(np.float32)
    if kind in "ui":
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype)
        if scale is None:
            raise InputError(
                f"{path}: {array.dtype} values; give uint8 (0..255), uint16 (0..65535) or floats in [0, 1]"
            )
        return array.astype(np.float32) / scale
    if kind != "f":
        raise InputError(f"{path}: dtype {array.dtype} is not numeric; give uint8, uint16 or float values")
    values = array.astype(np.float32)
    _check_unit_range(path, values, f"{array.dtype} float")
    return values


def _resize_array(array: np.ndarray, height: int, width: int) -> np.ndarray:
    if array.shape[1:] == (height, width):
        return array
    planes = [np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BILINEAR)) for plane in array]
    return np.clip(np.stack(planes), 0.0, 1.0)


# --- foregrounds -----------------------------------------------------------------------------


def _pixel(text: str) -> int:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return int(value)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """`x0,y0,x1,y1` in pixels of the image file (x0,y0 inclusive; x1,y1 exclusive)."""
    try:
        values = tuple(_pixel(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(
            f"{text!r}: give a box as x0,y0,x1,y1 (finite pixel numbers), 'center', a mask or a boxes CSV", option="fg"
        )
    return values  # type: ignore[return-value]


def read_boxes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """A CSV with a header; columns `file,x0,y0,x1,y1` found by name, others ignored. A byte-order
    mark (as spreadsheets write it) is fine; a file named on two rows is an error."""
    regular_file(path, "boxes CSV", MAX_CSV_BYTES)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the boxes CSV ({err})") from None
    needed = ["file", "x0", "y0", "x1", "y1"]
    columns = [c.strip() for c in (rows[0].keys() if rows else []) if c is not None]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InputError(f"{path}: the boxes CSV lacks columns {missing}; its header needs file,x0,y0,x1,y1")
    boxes: dict[str, tuple[int, ...]] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): v for k, v in row.items() if k}
        name = (row.get("file") or "").strip()
        if name in first_line:
            raise InputError(
                f"{path}: {name!r} has two boxes, on lines {first_line[name]} and {line}; keep one row per file"
            )
        try:
            boxes[name] = tuple(_pixel(row[c]) for c in needed[1:])
        except (TypeError, ValueError):
            raise InputError(
                f"{path}:{line}: box coordinates must be finite numbers, got "
                f"{','.join(str(row.get(c)) for c in needed[1:])}"
            ) from None
        first_line[name] = line
    return boxes  # type: ignore[return-value]


def box_mask(box: tuple[int, int, int, int], image: CanonicalImage) -> np.ndarray:
    """The box, given in pixels of the file, as a boolean mask at the model's resolution."""
    x0, y0, x1, y1 = box
    height, width = image.original_size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InputError(
            f"box {x0},{y0},{x1},{y1} for {image.name} lies outside the image ({width}x{height} pixels) or is empty; "
            f"x0<x1<={width}, y0<y1<={height}"
        )
    _, out_h, out_w = image.pixels.shape
    ys = (np.arange(out_h) + 0.5) * height / out_h
    xs = (np.arange(out_w) + 0.5) * width / out_w
    mask = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    if not mask.any():  # a box smaller than one model pixel still covers the pixel it sits in
        row = min(int((y0 + y1) / 2 * out_h / height), out_h - 1)
        mask[row, min(int((x0 + x1) / 2 * out_w / width), out_w - 1)] = True
    return mask


def center_mask(image: CanonicalImage) -> np.ndarray:
    """The authors' rule: the central box covering 2/3 of each side."""
    _, h, w = image.pixels.shape
    mask = np.zeros((h, w), dtype=bool)
    mask[round(h / 6) : round(5 * h / 6), round(w / 6) : round(5 * w / 6)] = True
    return mask


def mask_from_file(path: Path, image: CanonicalImage) -> np.ndarray:
    """A mask image (non-zero = foreground), resized to the model's resolution by nearest neighbour."""
    _, h, w = image.pixels.shape
    regular_file(path, "foreground mask", MAX_IMAGE_BYTES)
    try:
        with Image.open(path) as mask:
            if mask.mode in DEEP_MODES:
                array = np.asarray(mask.resize((w, h), Image.Resampling.NEAREST))
            else:
                array = np.asarray(mask.convert("L").resize((w, h), Image.Resampling.NEAREST))
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: too large to decode safely ({err}); downscale the mask") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the foreground mask ({type(err).__name__}); give a PNG") from None
    return array > 0
