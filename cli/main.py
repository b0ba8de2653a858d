"""`infodiscard` commands. Exit codes: 0 ok, 1 audit threshold failed, 2 bad usage or input,
3 conversion or cross-check failure, 4 analysis did not converge for some image and layer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from onnx_infodiscard import InfodiscardError, __version__
from onnx_infodiscard.check import open_model, prepare
from onnx_infodiscard.layers import list_layers

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how much of an input image's information each layer of an ONNX model discards.",
)
stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)

ModelArg = Annotated[Path, typer.Argument(help="Path of the .onnx model.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
InputShapeOpt = Annotated[
    Optional[str], typer.Option("--input-shape", help="Image input dims in the model's order, e.g. 1,3,224,224.")
]
InputNameOpt = Annotated[Optional[str], typer.Option("--input", help="Name of the image input (graphs with several).")]


def parse_ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise InfodiscardErrorUsage(f"{option} {text!r}: give comma-separated integers, e.g. 1,3,224,224") from None


class InfodiscardErrorUsage(InfodiscardError):
    exit_code = 2


@app.command()
def layers(
    model: ModelArg,
    ops: Annotated[Optional[str], typer.Option("--ops", help="Only these op types, e.g. Relu,Conv.")] = None,
    input_shape: InputShapeOpt = None,
    input_name: InputNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the candidate layers (node outputs) in topological order."""
    _, normalised = open_model(model, input_name, parse_ints(input_shape, "--input-shape"))
    found = list_layers(normalised)
    if ops:
        wanted = {op.strip() for op in ops.split(",")}
        found = [layer for layer in found if layer.op_type in wanted]
    if as_json:
        print(json.dumps([_layer_json(layer) for layer in found], indent=2))
        return
    table = Table(title=f"{model} ({len(found)} layers)")
    for column in ("index", "name", "op", "shape", "depth"):
        table.add_column(column, justify="right" if column in ("index", "depth") else "left")
    for layer in found:
        shape = "x".join(map(str, layer.shape)) if layer.shape else "?"
        table.add_row(str(layer.index), layer.name, layer.op_type, shape, f"{layer.depth:.2f}")
    stdout.print(table)


@app.command()
def check(
    model: ModelArg,
    layer: Annotated[
        Optional[list[str]], typer.Option("--layer", "-l", help="Layer name, index, glob or 'auto'; repeatable.")
    ] = None,
    input_shape: InputShapeOpt = None,
    input_name: InputNameOpt = None,
    tolerance: Annotated[float, typer.Option(help="Largest relative L2 error accepted against onnxruntime.")] = 1e-4,
    as_json: JsonOpt = False,
) -> None:
    """Convert the model at the chosen layers and cross-check every feature against onnxruntime."""
    prepared = prepare(
        model, layer or ["auto"], input_name, parse_ints(input_shape, "--input-shape"), tolerance=tolerance
    )
    summary = {
        "tool_version": __version__,
        "model": str(prepared.loaded.path),
        "sha256": prepared.loaded.sha256,
        "opset": prepared.normalised.opset,
        "input": {"name": prepared.normalised.input_name, "shape": list(prepared.normalised.input_shape)},
        "passes": [{"name": p.name, "detail": p.detail} for p in prepared.normalised.passes],
        "batch_safe": prepared.conversion.batch_safe,
        "provider": prepared.crosscheck.provider,
        "provider_note": prepared.crosscheck.note,
        "tolerance": prepared.crosscheck.tolerance,
        "layers": [
            {**_layer_json(chosen), "max_abs_error": agreement.max_abs_error, "rel_l2_error": agreement.rel_l2_error, "passed": agreement.passed}
            for chosen, agreement in zip(prepared.layers, prepared.crosscheck.layers)
        ],
        "seconds": round(prepared.seconds, 3),
        "passed": prepared.crosscheck.passed,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for applied in prepared.normalised.passes:
        stderr.print(f"[dim]normalise: {applied.name}: {applied.detail}[/dim]")
    if not prepared.conversion.batch_safe:
        stderr.print("[yellow]note: this graph mixes samples within a batch; the analysis runs one sample at a time[/yellow]")
    stderr.print(f"[dim]{prepared.crosscheck.note}[/dim]")
    table = Table(title=f"cross-check against onnxruntime ({prepared.crosscheck.provider})")
    for column in ("index", "layer", "op", "max abs err", "rel L2 err", "ok"):
        table.add_column(column)
    for chosen, agreement in zip(prepared.layers, prepared.crosscheck.layers):
        table.add_row(
            str(chosen.index), chosen.name, chosen.op_type, f"{agreement.max_abs_error:.2e}",
            f"{agreement.rel_l2_error:.2e}", "yes" if agreement.passed else "NO",
        )
    stdout.print(table)


def _layer_json(layer) -> dict:
    return {
        "index": layer.index,
        "name": layer.name,
        "op_type": layer.op_type,
        "node": layer.node_name,
        "shape": list(layer.shape) if layer.shape else None,
        "depth": round(layer.depth, 4),
    }


def run() -> None:
    """Console entry point: one-line errors with the documented exit codes, no traceback."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except InfodiscardError as err:
        if debug:
            raise
        stderr.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("error: interrupted", markup=False)
        raise SystemExit(130) from None


if __name__ == "__main__":
    run()
