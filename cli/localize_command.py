"""`infodiscard localize`: added to the main app by `register(app)`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard.errors import InputError
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard_cli.console import stage_progress, stderr, stdout


def register(app: typer.Typer) -> None:
    if localize not in {info.callback for info in app.registered_commands}:
        app.command("localize")(localize)


def localize(
    model: Annotated[Optional[Path], typer.Argument(help="The .onnx classifier (default: the shipped cluttered-digits benchmark).", show_default=False)] = None,
    images: Annotated[Optional[list[Path]], typer.Option("--images", "-i", help="Image files or folders; repeatable (default: the card's images).")] = None,
    boxes: Annotated[Optional[Path], typer.Option("--boxes", help="CSV file,x0,y0,x1,y1 (pixels of each file; optional label column = class to explain). Default: the card's.")] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Layer for CID and Grad-CAM: name, index or glob; repeatable (default: the card's deepest suggested layer).")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated: cid, gradcam, gradient, ig.")] = "cid,gradcam,gradient,ig",
    controls: Annotated[str, typer.Option(help="Model-free controls, comma-separated: brightness, contrast, edges, center; 'none' for none.")] = "brightness,contrast,edges,center",
    tau: Annotated[float, typer.Option(help="Distortion budget of CID's σ optimisation.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Adam steps on log σ.")] = SolverSettings.steps,
    samples: Annotated[int, typer.Option(help="Noise samples per image per step.")] = SolverSettings.samples,
    grid: Annotated[Optional[int], typer.Option(help="CID's σ on a GRID×GRID lattice (default: one σ per pixel).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overlays: Annotated[int, typer.Option(help="Per-image overlay PNGs to draw (0: none).")] = 24,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")] = Path("infodiscard-localize"),
    as_json: Annotated[bool, typer.Option("--json", help="Print {methods, n_images, protocol, verdict} as JSON.")] = False,
) -> None:
    """Do the maps find the object? Localisation (IoU ≥ 0.5), pointing game and deletion AUC of CID's
    sensitivity map, Grad-CAM, gradient and integrated gradients, beside model-free controls.

    Writes localization.json, methods.csv, images.csv, maps.npz, localization.png and overlays/.
    Exit code 0 also when a control scores as well as the methods: the verdict says so.
    """
    from onnx_infodiscard.localize import localize as run_localize
    from onnx_infodiscard.output import check_output_folder, json_text
    from onnx_infodiscard.output.localization import write_localization

    settings = SolverSettings(tau=tau, steps=steps, samples=samples, grid=grid, seed=seed)
    settings.validate()
    if overlays < 0:
        raise InputError(f"--overlays {overlays}: give 0 (none) or more")
    check_output_folder(out)
    with stage_progress(as_json) as progress:
        result = run_localize(
            model, images, boxes, layer, _names(methods), _names(controls), settings=settings, device=device,
            progress=progress,
        )
    folder = write_localization(result, out, overlays)
    if as_json:
        print(json_text(result.summary_json() | {"out": str(folder)}), end="")
        return
    stderr.print(f"[dim]{escape(result.crosscheck.note)}; device {result.device}; {result.seconds:.1f} s[/dim]")
    for note in result.notes:
        stderr.print(f"note: {note}", markup=False)
    table = Table(title=f"localisation on {len(result.images)} images ({result.protocol['target']})")
    for column in ("map", "loc acc", "± s.e.", "best fraction → acc", "pointing", "deletion AUC"):
        table.add_column(column, justify="left" if column == "map" else "right")
    for m in result.methods:
        table.add_row(escape(m.name) + (" (control)" if m.control else ""), f"{m.loc_acc:.3f}", f"{m.loc_acc_se:.3f}",
                      f"{m.best_fraction:.2f} → {m.loc_acc_best:.3f}", f"{m.pointing_acc:.3f}", f"{m.deletion_auc:.3f}")
    stdout.print(table)
    stdout.print(result.verdict, markup=False)
    stdout.print(f"outputs: {folder}")


def _names(text: str) -> list[str]:
    text = text.strip()
    return [] if text.lower() in ("", "none") else [part for part in text.split(",") if part.strip()]

