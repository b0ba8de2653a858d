"""`infodiscard card`: show a model card, or embed an edited one in a copy of the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from onnx_infodiscard.card import sidecar_path
from onnx_infodiscard.card_edit import default_copy, effective_card, updated, write_card
from onnx_infodiscard_cli import console
from onnx_infodiscard_cli.options import Model


def register(app: typer.Typer) -> None:
    app.command("card")(card)


def card(
    model: Model,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="KEY=VALUE, repeatable. VALUE is JSON when it parses as JSON, else text; list keys split on "
            "commas (suggested_layers=a,b). Dotted keys reach inside: preprocessing.scale=255; scale, "
            "mean, std, bgr are short for preprocessing.*.",
        ),
    ] = None,
    unset: Annotated[Optional[list[str]], typer.Option("--unset", help="Remove KEY from the card; repeatable.")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Where to write the copy (default MODEL.card.onnx beside the model). Naming the model "
            "itself replaces it.",
        ),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Print the card as JSON (after the change, when there is one).")
    ] = False,
) -> None:
    """Show the model card, or write it into the ONNX file's metadata so the model needs no flags.

    With no --set, --unset or --out: print the effective card as JSON, the one `analyze` uses (a
    MODEL.onnx.json beside the model wins over the card embedded in the file). Otherwise: start from
    the effective card, apply --unset and --set, check it against the graph (input name, layer
    names, preprocessing), and write a copy of the model that embeds it (metadata entry
    `infodiscard.card`) to --out, default MODEL.card.onnx. The input file is never modified unless
    --out names it explicitly; an existing --out file is replaced.
    """
    current = effective_card(model)
    if not (set_ or unset or out):
        where = {
            "sidecar": f"sidecar {current.sidecar}",
            "metadata": "embedded in the model",
            "none": "none: the model has no card",
        }[current.source]
        console.dim(f"card: {where}")
        if current.shadowed:
            console.note(f"the model also embeds a card, which {current.sidecar.name} overrides")
        print(json.dumps(current.card, indent=2))
        return
    new = updated(current.card, set_ or (), unset or ())
    target = write_card(model, new, out if out is not None else default_copy(model))
    console.note(f"wrote {target} (card embedded; started from the {current.source} card)", style="", prefix="")
    shadow = sidecar_path(target)
    if shadow.is_file() and json.loads(shadow.read_text() or "{}") != new:
        console.note(f"{shadow.name} beside it overrides the embedded card; remove or update it")
    if show:
        print(json.dumps(new, indent=2))
