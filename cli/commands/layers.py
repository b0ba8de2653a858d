"""`infodiscard layers`: the candidate layers of a graph."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard import list_layers, open_model
from onnx_infodiscard.audit import layer_json
from onnx_infodiscard_cli import validate
from onnx_infodiscard_cli.console import stdout
from onnx_infodiscard_cli.options import InputName, InputShape, Json, Model


def register(app: typer.Typer) -> None:
    app.command("layers")(layers)


def layers(
    model: Model,
    ops: Annotated[Optional[str], typer.Option("--ops", help="Only these op types, e.g. Relu,Conv.")] = None,
    input_shape: InputShape = None,
    input_name: InputName = None,
    as_json: Json = False,
) -> None:
    """List the candidate layers (node outputs) in topological order."""
    _, normalised = open_model(model, input_name, input_shape)
    found = list_layers(normalised)
    if ops:
        wanted = set(validate.names(ops))
        found = [layer for layer in found if layer.op_type in wanted]
    if as_json:
        print(json.dumps([layer_json(layer) for layer in found], indent=2))
        return
    table = Table(title=escape(f"{model} ({len(found)} layers)"))
    for column in ("index", "name", "op", "shape", "depth"):
        table.add_column(column, justify="right" if column in ("index", "depth") else "left")
    for layer in found:
        shape = "x".join(map(str, layer.shape)) if layer.shape else "?"
        table.add_row(str(layer.index), escape(layer.name), escape(layer.op_type), escape(shape), f"{layer.depth:.2f}")
    stdout.print(table)
