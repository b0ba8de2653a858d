"""Option callbacks: every number finite and in range, every list parsed, before any work starts.

Each raises `typer.BadParameter`; the app renders it as one `error: --flag: ...` line, exit 2.
`SolverSettings.validate` checks the same settings again for library callers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import typer

MAX_STEPS = 1_000_000  # ~a day for the digits CNN on one CPU thread; more is a typo
MAX_SAMPLES = 65_536
MAX_GRID = 4096
MAX_SEED = 2**63 - 1  # torch.Generator takes a signed 64-bit seed
MAX_DIM = 2**31 - 1  # ONNX dims are int64; the library estimates the memory of anything that fits
MAX_OVERLAYS = 100_000


def number(what: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable:
    """A callback accepting a finite number in [low, high] (or (low, high] when `low_open`); None passes."""

    def check(value):
        if value is None:
            return None
        try:
            bad = not math.isfinite(value)
        except OverflowError:  # an int beyond any float
            bad = True
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and value > high)
        if bad:
            shown = str(value) if len(str(value)) <= 24 else str(value)[:20] + "..."
            raise typer.BadParameter(f"{shown} is out of range; give {what}")
        return value

    return check


def shape(text: str | None) -> tuple[int, ...] | None:
    """`1,3,224,224` (or `1x3x224x224`) -> four positive sizes in the model's order."""
    if text is None:
        return None
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        dims = ()
    if len(dims) != 4 or not all(0 < d <= MAX_DIM for d in dims):
        raise typer.BadParameter(f"{text!r}: give four positive sizes N,C,H,W in the model's order, e.g. 1,3,224,224")
    return dims


def floats(positive: bool) -> Callable:
    """A callback parsing `0.485,0.456,0.406` into finite floats (all > 0 when `positive`)."""

    def parse(text: str | None) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            values = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            values = ()
        if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            kind = "positive finite numbers" if positive else "finite numbers"
            raise typer.BadParameter(f"{text!r}: give comma-separated {kind}, one per channel, e.g. 0.485,0.456,0.406")
        return values

    return parse


def box(text: str | None) -> str | None:
    """`x0,y0,x1,y1` in pixels or `center`; the library turns it into a box once the images are known."""
    if text is None or text.strip().lower() in ("center", "centre"):
        return text
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) and abs(v) <= 2**31 for v in values):
        raise typer.BadParameter(f"{text!r}: give a box as x0,y0,x1,y1 (pixels of the image file) or 'center'")
    return text


def names(text: str) -> list[str]:
    """`a,b,c` -> ['a', 'b', 'c']; `none` or nothing -> []."""
    text = text.strip()
    return [] if text.lower() in ("", "none") else [part.strip() for part in text.split(",") if part.strip()]


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def memory(text: str | None) -> int | None:
    """`4GB`, `512MiB`, `1e9` -> bytes (at least 1 MiB)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    try:
        value = float(match.group(1)) * _UNITS[unit] if match else float("nan")
    except (ValueError, KeyError):
        value = float("nan")
    if not math.isfinite(value) or value < 2**20:
        raise typer.BadParameter(f"{text!r}: give a memory size of at least 1MiB, e.g. 4GB or 512MiB")
    return int(value)
