"""`infodiscard localize`: do the maps find the object? CID beside attribution baselines and controls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard import localize as run_localize
from onnx_infodiscard.output import check_output_folder, json_text
from onnx_infodiscard.output.localization import write_localization
from onnx_infodiscard_cli import console, validate
from onnx_infodiscard_cli import options as opt
from onnx_infodiscard_cli.console import stage_progress, stdout
from onnx_infodiscard_cli.validate import MAX_OVERLAYS


def register(app: typer.Typer) -> None:
    app.command("localize")(localize)


def localize(
    model: Annotated[
        Optional[Path],
        typer.Argument(
            help="The .onnx classifier (default: the shipped cluttered-digits benchmark).", show_default=False
        ),
    ] = None,
    images: Annotated[
        Optional[list[Path]],
        typer.Option("--images", "-i", help="Image files or folders; repeatable (default: the card's images)."),
    ] = None,
    boxes: Annotated[
        Optional[Path],
        typer.Option(
            "--boxes",
            help="CSV file,x0,y0,x1,y1 (pixels of each file; optional label column = class to explain). "
            "Default: the card's.",
        ),
    ] = None,
    layer: Annotated[
        Optional[list[str]],
        typer.Option(
            "--layer",
            "-l",
            help="Layer for CID and Grad-CAM: name, index or glob; repeatable "
            "(default: the card's deepest suggested layer).",
        ),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: cid, gradcam, gradient, ig.")
    ] = "cid,gradcam,gradient,ig",
    controls: Annotated[
        str,
        typer.Option(
            help="Model-free controls, comma-separated: brightness, contrast, edges, center; 'none' for none."
        ),
    ] = "brightness,contrast,edges,center",
    tau: opt.Tau = opt.SOLVER.tau,
    steps: opt.Steps = opt.SOLVER.steps,
    samples: opt.Samples = opt.SOLVER.samples,
    grid: opt.Grid = opt.SOLVER.grid,
    seed: opt.Seed = opt.SOLVER.seed,
    device: opt.DeviceOpt = "auto",
    overlays: Annotated[
        int,
        typer.Option(
            callback=validate.number(f"0 (none) to {MAX_OVERLAYS} overlays", 0, MAX_OVERLAYS),
            help="Per-image overlay PNGs to draw (0: none).",
        ),
    ] = 24,
    out: opt.Out = Path("infodiscard-localize"),
    max_memory: opt.MaxMemory = None,
    no_cache: opt.NoCache = False,
    ray: opt.Ray = None,
    new_subfolder: opt.NewSubfolder = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {methods, n_images, protocol, verdict} as JSON.")
    ] = False,
) -> None:
    """Do the maps find the object? Localisation (IoU ≥ 0.5), pointing game and deletion AUC of CID's
    sensitivity map, Grad-CAM, gradient and integrated gradients, beside model-free controls.

    Writes localization.json, methods.csv, images.csv, maps.npz, localization.png and overlays/.
    Exit code 0 also when a control scores as well as the methods: the verdict says so.
    """
    settings = opt.solver_settings(tau=tau, steps=steps, samples=samples, grid=grid, seed=seed, max_memory=max_memory)
    cache = opt.row_cache(no_cache)
    inputs = [model, *(images or []), boxes, cache and cache.root]
    out = check_output_folder(out, [p for p in inputs if p is not None], new_subfolder=new_subfolder)
    with stage_progress(as_json) as progress:
        result = run_localize(
            model,
            images,
            boxes,
            layer,
            validate.names(methods),
            validate.names(controls),
            settings=settings,
            device=opt.choice(device),
            cache=cache,
            ray=ray,
            progress=progress,
        )
    folder = write_localization(result, out, overlays, new_subfolder=new_subfolder)
    if as_json:
        print(json_text(result.summary_json() | {"out": str(folder)}), end="")
        return
    console.dim(f"{result.crosscheck.note}; device {result.device}; {result.seconds:.1f} s")
    for note in result.notes:
        console.note(note, style="")
    table = Table(title=escape(f"localisation on {len(result.images)} images ({result.protocol['target']})"))
    for column in ("map", "loc acc", "± s.e.", "best fraction → acc", "pointing", "deletion AUC"):
        table.add_column(column, justify="left" if column == "map" else "right")
    for m in result.methods:
        table.add_row(
            escape(m.name) + (" (control)" if m.control else ""),
            f"{m.loc_acc:.3f}",
            f"{m.loc_acc_se:.3f}",
            f"{m.best_fraction:.2f} → {m.loc_acc_best:.3f}",
            f"{m.pointing_acc:.3f}",
            f"{m.deletion_auc:.3f}",
        )
    stdout.print(table)
    stdout.print(result.verdict, markup=False)
    stdout.print(f"outputs: {folder}", markup=False)
