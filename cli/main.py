"""The `infodiscard` entry point: runs the Typer app and turns every way a run can end into one exit code.

Exit codes: 0 ok, 1 an audit rule (--fail-if) held, 2 bad usage or input, 3 conversion or
cross-check failure, 4 some image and layer did not converge, 70 internal error (a bug: run with
--debug for the traceback), 130 interrupted (Ctrl-C), 141 the reader of stdout went away (a broken
pipe, as in `infodiscard layers M | head -1`: quiet, like a tool that SIGPIPE ends), 143 terminated
(SIGTERM, raised as an exception so that temporary folders are cleaned up). Whatever else goes wrong,
stderr gets one `error:` line.

This module imports only the standard library at the top, so that a Ctrl-C while torch and onnx are
still importing is caught here like any other.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence

EXIT_INTERNAL = 70  # EX_SOFTWARE in sysexits.h: not 1, which is "an audit rule held"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left; not 1
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
        sys.stdout.flush()  # a broken pipe shows here when the output fit in the buffer
    except BrokenPipeError:
        code = _broken_pipe()
    except SystemExit as exit:  # Click (and Rich) end a broken pipe with exit(1), "an audit rule held" here
        code = _broken_pipe() if _is_broken_pipe(exit.__context__) else _report(exit, state.debug, args)
    except KeyboardInterrupt:  # while importing, or outside a command; inside one, the app returns 130
        code = EXIT_INTERRUPTED
    except Terminated:
        code = EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - the one place that turns any exception into a line
        code = _report(err, state.debug, args)
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


def _is_broken_pipe(err: BaseException | None) -> bool:
    return isinstance(err, OSError) and err.errno == errno.EPIPE


def _broken_pipe() -> int:
    """Quiet exit 141: what is still buffered for a closed pipe goes to /dev/null, so that the
    interpreter's last flush cannot print an `Exception ignored` traceback."""
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # closed, or not a file: nothing pending
            pass
    return EXIT_BROKEN_PIPE


def _report(err: BaseException, debug: bool, args: Sequence[str] = ()) -> int:
    from onnx_infodiscard.errors import InfodiscardError

    if isinstance(err, InfodiscardError):
        if debug:
            traceback.print_exception(err)
        flags = _flags(args[_first_command(list(args))] if _first_command(list(args)) < len(args) else None)
        _error(err.rendered(lambda option: flags.get(option, option)))
        return err.exit_code
    if debug:
        traceback.print_exception(err)
    first = (str(err).strip().splitlines() or [""])[0]
    _error(f"internal error: {type(err).__name__}: {first} (run with --debug for the traceback)")
    return EXIT_INTERNAL


#: Library options that no CLI parameter carries under their own name: the flag that governs them.
FLAG_ALIASES = {"cache": "--no-cache", "layers": "--layer", "set": "--set"}


def _flags(command: str | None) -> dict[str, str]:
    """Python parameter name -> its long flag (`input_name` -> `--input`): the command's own, then
    FLAG_ALIASES, then any command's. A library error names its option; the line shows a real flag."""
    try:
        import typer

        from onnx_infodiscard_cli.app import app

        group = typer.main.get_command(app)
        own = [group.commands[command]] if command in group.commands else []
        found: dict[str, str] = {}
        for each in [*own, None, *group.commands.values(), group]:
            if each is None:
                found = {**FLAG_ALIASES, **found}
                continue
            for param in each.params:
                long = [opt for opt in param.opts if opt.startswith("--")]
                if long and param.name:
                    found.setdefault(param.name, long[0])
        return found
    except Exception:  # noqa: BLE001 - while reporting an error, never raise another
        return dict(FLAG_ALIASES)


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
