"""Errors a user can act on. Each carries the CLI exit code that reports it: 1 an audit rule held,
2 bad usage or input, 3 conversion or cross-check failure, 4 some result did not converge. (The CLI
adds 70 for an internal error, a bug, 130 for an interrupted run, 141 for a broken pipe and 143 for
SIGTERM; see `onnx_infodiscard_cli.main`.)

A library error about one argument names it by its Python name in `option` (`tau`, `max_memory`)
and leaves it out of the message; `str(err)` reads `tau: ...` for library users, and the CLI
renders the same error as `--tau: ...`. Library messages never spell a CLI flag themselves.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InfodiscardError(Exception):
    """Base class: a one-line message that names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option

    def __str__(self) -> str:
        return f"{self.option}: {self.message}" if self.option else self.message

    def rendered(self, as_flag=lambda option: "--" + option.replace("_", "-")) -> str:
        """The message with its option shown as the front end spells it (a CLI flag by default)."""
        return f"{as_flag(self.option)}: {self.message}" if self.option else self.message


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


class AuditFailed(InfodiscardError):
    """At least one `--fail-if` rule held: exit code 1 (the outputs are written and say which)."""

    exit_code = 1


class NotConverged(InfodiscardError):
    """The run finished and wrote its outputs, but some (image, layer) missed its budget: exit code 4."""

    exit_code = 4
