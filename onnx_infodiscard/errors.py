"""Errors a user can act on. Each carries the CLI exit code that reports it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InfodiscardError(Exception):
    """Base class: a one-line message that names the problem and the fix."""

    exit_code = 2


class InputError(InfodiscardError):
    """Bad usage or bad input (a file, an option, an image): exit code 2."""

    exit_code = 2


class ConversionError(InfodiscardError):
    """The graph could not be converted, or the conversion disagrees with onnxruntime: exit code 3."""

    exit_code = 3


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """`did you mean 'a', 'b', 'c'?` for an unknown name (empty when there is nothing close)."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.0)
    return ("; did you mean " + ", ".join(repr(m) for m in matches) + "?") if matches else ""
