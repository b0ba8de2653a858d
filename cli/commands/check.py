"""`infodiscard check`: convert at the chosen layers and cross-check against onnxruntime."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard import __version__, prepare
from onnx_infodiscard.audit import check_json
from onnx_infodiscard.crosscheck import DEFAULT_RTOL
from onnx_infodiscard_cli import console, validate
from onnx_infodiscard_cli.console import stdout
from onnx_infodiscard_cli.options import InputName, InputShape, Json, Layers, Model


def register(app: typer.Typer) -> None:
    app.command("check")(check)


def check(
    model: Model,
    layer: Layers = None,
    input_shape: InputShape = None,
    input_name: InputName = None,
    tolerance: Annotated[
        float,
        typer.Option(
            callback=validate.number(f"a finite relative error > 0 (default {DEFAULT_RTOL:g})", 0, low_open=True),
            help="Largest relative L2 error accepted against onnxruntime.",
        ),
    ] = DEFAULT_RTOL,
    as_json: Json = False,
) -> None:
    """Convert the model at the chosen layers and cross-check every feature against onnxruntime."""
    prepared = prepare(model, layer or ["auto"], input_name, input_shape, tolerance=tolerance)
    if as_json:
        print(json.dumps(check_json(prepared, __version__), indent=2))
        return
    for applied in prepared.normalised.passes:
        console.dim(f"normalise: {applied.name}: {applied.detail}")
    for note in prepared.notes:
        console.note(note)
    if not prepared.conversion.batch_safe:
        console.note("this graph mixes samples within a batch; the analysis runs one sample at a time")
    console.dim(prepared.crosscheck.note)
    table = Table(title=escape(f"cross-check against onnxruntime ({prepared.crosscheck.provider})"))
    for column in ("index", "layer", "op", "max abs err", "rel L2 err", "ok"):
        table.add_column(column)
    for chosen, agreement in zip(prepared.layers, prepared.crosscheck.layers):
        table.add_row(
            str(chosen.index),
            escape(chosen.name),
            escape(chosen.op_type),
            f"{agreement.max_abs_error:.2e}",
            f"{agreement.rel_l2_error:.2e}",
            ("yes" if agreement.criterion == "relative_l2" else f"yes ({agreement.criterion})")
            if agreement.passed
            else ("NO: " + agreement.criterion),
        )
    stdout.print(table)
    if prepared.crosscheck.quantised or prepared.crosscheck.quantised_note:
        _print_quantised(prepared.crosscheck)


def _print_quantised(crosscheck) -> None:
    """A dequantised graph: its float features against onnxruntime on the quantised original."""
    console.dim(crosscheck.quantised_note)
    table = Table(title="float equivalent against the quantised original")
    for column in ("layer", "rel L2 err", "tolerance", "simulated rounding", "ok"):
        table.add_column(column)
    for agreement in crosscheck.quantised:
        ok = "yes" if agreement.passed else "NO: " + agreement.criterion
        row = (agreement.rel_l2_error, agreement.tolerance, agreement.sensitivity)
        table.add_row(escape(agreement.layer), *(f"{value:.2e}" for value in row), ok)
    if crosscheck.quantised:
        stdout.print(table)
