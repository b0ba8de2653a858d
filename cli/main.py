"""The `infodiscard` entry point: runs the Typer app and turns every way a run can end into one exit code.

Exit codes: 0 ok, 1 an audit rule (--fail-if) held, 2 bad usage or input, 3 conversion or
cross-check failure, 4 some image and layer did not converge, 70 internal error (a bug: run with
--debug for the traceback), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, raised as an
exception so that temporary folders are cleaned up). Whatever goes wrong, stderr gets one `error:` line.

This module imports only the standard library at the top, so that a Ctrl-C while torch and onnx are
still importing is caught here like any other.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence

EXIT_INTERNAL = 70  # EX_SOFTWARE in sysexits.h: not 1, which is "an audit rule held"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM as an exception in the main thread, so that cleanup (`finally`, temporary folders) runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


class RunState:
    """What the app's callback learns about this run (`--debug`) that the error handler needs."""

    def __init__(self) -> None:
        self.debug = False


def run(argv: Sequence[str] | None = None) -> int:
    """Run `infodiscard` with `argv` (default: the command line) and return its exit code."""
    state = RunState()
    args = list(sys.argv[1:] if argv is None else argv)
    state.debug = "--debug" in args[: _first_command(args)]  # before the app exists: errors while importing
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default" if state.debug else "ignore")
            from onnx_infodiscard_cli.app import invoke

            code = invoke(args, state)
    except KeyboardInterrupt:  # while importing, or outside a command; inside one, the app returns 130
        code = EXIT_INTERRUPTED
    except Terminated:
        code = EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - the one place that turns any exception into a line
        code = _report(err, state.debug)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        _error("interrupted" if code == EXIT_INTERRUPTED else "terminated")
    return code


def _first_command(args: list[str]) -> int:
    """Index of the first argument that is not a global option (where the subcommand starts)."""
    for index, arg in enumerate(args):
        if not arg.startswith("-"):
            return index
    return len(args)


def _report(err: Exception, debug: bool) -> int:
    from onnx_infodiscard.errors import InfodiscardError

    if isinstance(err, InfodiscardError):
        if debug:
            traceback.print_exception(err)
        _error(err.rendered())
        return err.exit_code
    if debug:
        traceback.print_exception(err)
    first = (str(err).strip().splitlines() or [""])[0]
    _error(f"internal error: {type(err).__name__}: {first} (run with --debug for the traceback)")
    return EXIT_INTERNAL


def _error(message: str) -> None:
    """One line on stderr, never interpreted as markup."""
    text = " ".join(message.split("\n"))
    try:
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or a broken pipe: nothing left to tell
        pass


if __name__ == "__main__":
    sys.exit(run())
