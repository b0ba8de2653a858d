"""Images in the canonical space (C×H×W float32 in [0, 1] at the model's resolution), and foregrounds."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


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
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such image file or folder")
    if not found:
        raise InputError("no images given; pass image files, a folder of images or .npy arrays")
    return found


def load_images(paths: Sequence[Path], shape: tuple[int, int, int]) -> list[CanonicalImage]:
    """Read every path and resize it to `shape` = (C, H, W)."""
    return [load_image(path, shape) for path in paths]


def load_image(path: Path, shape: tuple[int, int, int]) -> CanonicalImage:
    channels, height, width = shape
    if path.suffix.lower() == ".npy":
        array = _read_npy(path, channels)
        original = array.shape[1:]
        pixels = _resize_array(array, height, width)
    else:
        if channels not in MODES:
            raise InputError(f"the model takes {channels} channels; image files give 1, 3 or 4 — pass .npy arrays instead")
        try:
            with Image.open(path) as image:
                image.load()
                original = (image.height, image.width)
                converted = image.convert(MODES[channels]).resize((width, height), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read it as an image ({type(err).__name__}); give a PNG, JPEG, BMP or TIFF") from None
        array = np.asarray(converted, dtype=np.float32) / 255.0
        pixels = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return CanonicalImage(path.name, np.ascontiguousarray(pixels, dtype=np.float32), tuple(original))


def _read_npy(path: Path, channels: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err})") from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(2, 0, 1)  # H×W×C
    elif array.ndim != 3:
        raise InputError(f"{path}: array of shape {array.shape}; give H×W, C×H×W or H×W×C")
    if array.shape[0] != channels:
        raise InputError(f"{path}: has {array.shape[0]} channels but the model takes {channels}; convert the array")
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError(f"{path}: float values must be finite and in [0, 1] (found {array.min():.3g}..{array.max():.3g}); rescale it")
    return array


def _resize_array(array: np.ndarray, height: int, width: int) -> np.ndarray:
    if array.shape[1:] == (height, width):
        return array
    planes = [
        np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BILINEAR)) for plane in array
    ]
    return np.clip(np.stack(planes), 0.0, 1.0)


# --- foregrounds -----------------------------------------------------------------------------


def parse_box(text: str) -> tuple[int, int, int, int]:
    """`x0,y0,x1,y1` in pixels of the image file (x0,y0 inclusive; x1,y1 exclusive)."""
    try:
        values = tuple(int(float(v)) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--fg {text!r}: give a box as x0,y0,x1,y1 (pixels), 'center', or use --fg-mask/--fg-boxes")
    return values  # type: ignore[return-value]


def read_boxes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """A CSV with a header; columns `file,x0,y0,x1,y1` found by name, others ignored."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the boxes CSV ({err})") from None
    needed = ["file", "x0", "y0", "x1", "y1"]
    columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InputError(f"{path}: the boxes CSV lacks columns {missing}; its header needs file,x0,y0,x1,y1")
    boxes = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): v for k, v in row.items() if k}
        try:
            boxes[row["file"].strip()] = tuple(int(float(row[c])) for c in needed[1:])
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: box coordinates must be numbers") from None
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
        mask[min(int((y0 + y1) / 2 * out_h / height), out_h - 1), min(int((x0 + x1) / 2 * out_w / width), out_w - 1)] = True
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
    try:
        with Image.open(path) as mask:
            array = np.asarray(mask.convert("L").resize((w, h), Image.Resampling.NEAREST))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: cannot read the foreground mask ({type(err).__name__}); give a PNG") from None
    return array > 0
