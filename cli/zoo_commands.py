"""`infodiscard compare` and `infodiscard card`: added to the main app by `register(app)`.

Errors are raised as `InfodiscardError`s; `main.run()` prints them as one `error:` line with their
exit code (1 audit failed, 2 bad input, 3 conversion, 4 some result did not converge).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard.errors import InfodiscardError
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard_cli.console import stage_progress, stderr, stdout



class NotConverged(InfodiscardError):
    """The comparison finished but some (image, layer) missed its budget: exit code 4."""

    exit_code = 4


def register(app: typer.Typer) -> None:
    """Add `compare` and `card` to `app` (once, however often it is called)."""
    present = {info.callback for info in app.registered_commands}
    if compare not in present:
        app.command("compare")(compare)
    if card not in present:
        app.command("card")(card)


def compare(
    models: Annotated[list[Path], typer.Argument(help="Two or more .onnx models.", show_default=False)],
    images: Annotated[Optional[list[Path]], typer.Option("--images", "-i", help="Image files or folders, the same for every model; repeatable (default: the folder every model's card names).")] = None,
    layers: Annotated[Optional[list[str]], typer.Option("--layers", "--layer", "-l", help="Layer name, index, glob or 'auto', the same for every model; repeatable (default: each card's suggested layers, else auto).")] = None,
    tau: Annotated[float, typer.Option(help="Distortion budget, the same for every layer and model.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Adam steps on log σ.")] = SolverSettings.steps,
    samples: Annotated[int, typer.Option(help="Noise samples per image and layer per step.")] = SolverSettings.samples,
    seed: Annotated[int, typer.Option(help="Seed of the noise; same seed, same numbers.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fg: Annotated[Optional[str], typer.Option("--fg", help="Foreground box x0,y0,x1,y1 in image pixels, or 'center' (default: the cards' boxes for their own images).")] = None,
    fg_mask: Annotated[Optional[Path], typer.Option("--fg-mask", help="Foreground mask image (non-zero = object).")] = None,
    fg_boxes: Annotated[Optional[Path], typer.Option("--fg-boxes", help="CSV with columns file,x0,y0,x1,y1.")] = None,
    fail_if: Annotated[Optional[list[str]], typer.Option("--fail-if", help="Audit rule METRIC[LAYER] OP NUMBER, e.g. 'cid[-1] > 1.2' (metric: cid, delta_cid, concentration, ru; layer: name or index among the chosen layers); judged on every model; exit 1 if any holds. Repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")] = Path("infodiscard-compare"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison table and audit as JSON.")] = False,
) -> None:
    """Run the same images through every model and compare CID and concentration by relative depth.

    Writes comparison.json (table, depth alignment, audit outcomes, each model's summary),
    comparison.csv, comparison.png and a self-contained comparison.html. Exit code 1 when a
    --fail-if rule holds (the outputs are still written and list the outcomes), else 4 when some
    image and layer did not converge, else 0.
    """
    from onnx_infodiscard.analysis import Foreground
    from onnx_infodiscard.audit import parse_rules, raise_on_failure
    from onnx_infodiscard.compare import check_output_folder, compare as run_compare, write_comparison
    from onnx_infodiscard.output import json_text

    settings = SolverSettings(tau=tau, steps=steps, samples=samples, seed=seed)
    settings.validate()
    rules = parse_rules(fail_if)
    check_output_folder(out)
    foreground = Foreground.parse(fg, fg_mask, fg_boxes)
    with stage_progress(as_json) as progress:
        comparison = run_compare(models, images, layers, settings=settings, foreground=foreground,
                                 device=device, rules=rules, progress=progress)
    folder = write_comparison(comparison, out)
    if as_json:
        data = comparison.to_json()
        print(json_text({k: data[k] for k in ("models", "converged", "table", "audit")} | {"out": str(folder)}), end="")
    else:
        _print_table(comparison, folder)
    raise_on_failure(comparison.outcomes)
    if not comparison.converged:
        failed = [f"{name}:{r.image}:{r.layer}" for name, report in zip(comparison.models, comparison.reports)
                  for r in report.results if not r.converged]
        raise NotConverged(f"{len(failed)} image/layer results did not converge: {', '.join(failed[:5])}; "
                           "they are marked in the comparison — try more --steps")


def card(
    model: Annotated[Path, typer.Argument(help="The .onnx model.", show_default=False)],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE, repeatable. VALUE is JSON when it parses as JSON, else text; list keys split on commas (suggested_layers=a,b). Dotted keys reach inside: preprocessing.scale=255; scale, mean, std, bgr are short for preprocessing.*.")] = None,
    unset: Annotated[Optional[list[str]], typer.Option("--unset", help="Remove KEY from the card; repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the copy (default MODEL.card.onnx beside the model). Naming the model itself replaces it.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the card as JSON (after the change, when there is one).")] = False,
) -> None:
    """Show the model card, or write it into the ONNX file's metadata so the model needs no flags.

    With no --set, --unset or --out: print the effective card as JSON, the one `analyze` uses (a
    MODEL.onnx.json beside the model wins over the card embedded in the file). Otherwise: start from
    the effective card, apply --unset and --set, check it against the graph (input name, layer
    names, preprocessing), and write a copy of the model that embeds it (metadata entry
    `infodiscard.card`) to --out, default MODEL.card.onnx. The input file is never modified unless
    --out names it explicitly; an existing --out file is replaced.
    """
    from onnx_infodiscard.card import default_copy, effective_card, sidecar_path, updated, write_card

    current = effective_card(model)
    if not (set_ or unset or out):
        where = {"sidecar": f"sidecar {current.sidecar}", "metadata": "embedded in the model",
                 "none": "none: the model has no card"}[current.source]
        stderr.print(f"[dim]card: {escape(where)}[/dim]", highlight=False)
        if current.shadowed:
            stderr.print(f"[yellow]note: the model also embeds a card, which {escape(current.sidecar.name)} overrides[/yellow]",
                         highlight=False)
        print(json.dumps(current.card, indent=2))
        return
    new = updated(current.card, set_ or (), unset or ())
    target = write_card(model, new, out if out is not None else default_copy(model))
    stderr.print(f"wrote {target} (card embedded; started from the {current.source} card)", markup=False,
                 highlight=False)
    shadow = sidecar_path(target)
    if shadow.is_file() and json.loads(shadow.read_text() or "{}") != new:
        stderr.print(f"[yellow]note: {escape(shadow.name)} beside it overrides the embedded card; remove or update it[/yellow]",
                     highlight=False)
    if show:
        print(json.dumps(new, indent=2))


def _print_table(comparison, folder: Path) -> None:
    table = Table(title=f"information discarding by relative depth, τ={comparison.reports[0].settings.tau} "
                        "(nats per input value)")
    for column in ("model", "layer", "depth", "CID", "ΔCID", "concentration", "converged"):
        table.add_column(column, justify="left" if column in ("model", "layer") else "right")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for r in sorted(comparison.rows, key=lambda r: (r.depth, comparison.models.index(r.model))):
        table.add_row(escape(r.model), escape(r.layer), f"{r.depth:.2f}", fmt(r.cid), fmt(r.delta_cid), fmt(r.concentration),
                      f"{r.n_converged}/{r.n_images}")
    stdout.print(table)
    for outcome in comparison.outcomes:
        style = "red" if outcome.failed else "green"
        stdout.print(f"[{style}]audit: {escape(outcome.describe())}[/{style}]", highlight=False)
    stdout.print(f"comparison: {folder / 'comparison.html'}", markup=False, highlight=False)
