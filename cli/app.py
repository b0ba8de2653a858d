"""The Typer app: global options in one callback, the commands from `commands/`, and `invoke`, which
runs the app without Click's own error printing so that `main.run` renders every failure alike."""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer

from onnx_infodiscard import InputError, __version__
from onnx_infodiscard_cli import console
from onnx_infodiscard_cli.commands import analyze, card, check, compare, layers, localize

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.stdout.print(f"infodiscard {__version__}", markup=False)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Tracebacks, dependency warnings and a line per stage.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr; errors still print.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            min=1,
            help="torch CPU threads (default: the cores this process may use, affinity and "
            "cgroup quota; more oversubscribes).",
        ),
    ] = None,
) -> None:
    """Measure how much of an input image's information each layer of an ONNX model discards.

    Exit codes: 0 ok, 1 an audit rule (--fail-if) held, 2 bad usage or input, 3 conversion or
    cross-check failure, 4 some image and layer did not converge, 70 internal error, 130 interrupted,
    141 broken pipe, 143 terminated.
    """
    if ctx.obj is not None:
        ctx.obj.debug = ctx.obj.debug or debug
    if debug:
        warnings.simplefilter("default")
    console.configure(quiet=quiet, debug=debug)
    import torch

    from onnx_infodiscard.perturb import usable_cores

    torch.set_num_threads(threads or usable_cores())  # the CLI owns its process's thread pool
    if ctx.invoked_subcommand is None:
        console.stdout.print(ctx.get_help(), markup=False)
        raise typer.Exit()


for module in (layers, check, analyze, compare, card, localize):
    module.register(app)


def invoke(args: list[str], state) -> int:
    """Run the app on `args`; usage errors become InputError (exit 2); returns the exit code."""
    console.configure()
    try:
        result = app(args, prog_name="infodiscard", standalone_mode=False, obj=state)
    except typer.Abort:
        raise KeyboardInterrupt from None
    except typer.TyperException as err:  # Click's usage errors: unknown flag, bad value, missing argument
        raise _usage_error(err) from None
    return result if isinstance(result, int) else 0


def _usage_error(err: typer.TyperException) -> InputError:
    param = getattr(err, "param", None)
    flags = [opt for opt in getattr(param, "opts", ()) if opt.startswith("--")]
    if isinstance(err, typer.BadParameter) and flags and err.message:
        message = err.message.removeprefix("Value error, ")  # typer's prefix on a bad choice
        return InputError(" ".join(message.split()), option=flags[0][2:].replace("-", "_"))
    return InputError(" ".join(err.format_message().split()))
