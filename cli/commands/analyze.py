"""`infodiscard analyze` and `infodiscard ru`: one command under two names; `ru` is `analyze --ru`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard import Foreground, open_session
from onnx_infodiscard import analyze as run_analysis
from onnx_infodiscard.audit import audited, parse_rules, raise_verdict, unconverged_results
from onnx_infodiscard.embedded import default_model
from onnx_infodiscard.output import check_output_folder
from onnx_infodiscard.output.analysis import summary_json, write_report
from onnx_infodiscard.rows import all_rows, estimate_rows
from onnx_infodiscard.ru import check_cache_dir
from onnx_infodiscard_cli import console, validate
from onnx_infodiscard_cli import options as opt
from onnx_infodiscard_cli.console import fmt, stage_progress, stdout

#: Predicted seconds above which a run says beforehand how long and how much memory it will take.
ESTIMATE_ABOVE = 30

RU_HELP = "Reconstruction uncertainty (RU) per layer, beside CID: `analyze --ru`, with every analyze option."


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
    app.command("ru", help=RU_HELP)(analyze)


def analyze(
    ctx: typer.Context,
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx model (default: the shipped digits CNN).", show_default=False)
    ] = None,
    images: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Image files, folders or .npy arrays (default: the card's images).", show_default=False),
    ] = None,
    layer: opt.Layers = None,
    tau: opt.Tau = opt.SOLVER.tau,
    steps: opt.Steps = opt.SOLVER.steps,
    samples: opt.Samples = opt.SOLVER.samples,
    grid: opt.Grid = opt.SOLVER.grid,
    sigma_max: opt.SigmaMax = opt.SOLVER.sigma_max,
    seed: opt.Seed = opt.SOLVER.seed,
    device: opt.DeviceOpt = "auto",
    precision: opt.PrecisionOpt = opt.SOLVER.precision,
    memory_format: opt.MemoryFormatOpt = opt.SOLVER.memory_format,
    preset: Annotated[Optional[opt.Preset], typer.Option(help="Preprocessing preset (default: the card's).")] = None,
    scale: Annotated[
        Optional[float],
        typer.Option(
            callback=validate.number("a finite scale > 0, e.g. 255", 0, low_open=True),
            help="Multiply the [0,1] image by this (e.g. 255).",
        ),
    ] = None,
    mean: Annotated[
        Optional[str],
        typer.Option(
            callback=validate.floats(positive=False),
            help="Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406.",
        ),
    ] = None,
    std: Annotated[
        Optional[str],
        typer.Option(callback=validate.floats(positive=True), help="Per-channel std divided by after the mean."),
    ] = None,
    layout: Annotated[
        Optional[opt.Layout], typer.Option(case_sensitive=False, help="The model's input layout.")
    ] = None,
    bgr: Annotated[
        Optional[bool], typer.Option("--bgr/--rgb", help="Feed channels as BGR.", show_default=False)
    ] = None,
    fg: opt.Fg = None,
    fg_mask: opt.FgMask = None,
    fg_boxes: opt.FgBoxes = None,
    input_shape: opt.InputShape = None,
    input_name: opt.InputName = None,
    out: opt.Out = Path("infodiscard-report"),
    ru: Annotated[
        bool, typer.Option("--ru", help="Also reconstruction uncertainty (trains or loads decoders).")
    ] = False,
    train_images: Annotated[
        Optional[Path], typer.Option("--train-images", help="Decoder training images (default: the card's).")
    ] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train decoders anew instead of using the cache.")] = False,
    fail_if: opt.FailIf = None,
    max_memory: opt.MaxMemory = None,
    no_cache: opt.NoCache = False,
    ray: opt.Ray = None,
    new_subfolder: opt.NewSubfolder = False,
    as_json: opt.Json = False,
) -> None:
    """Measure how much of each image's information each chosen layer discards (CID maps).

    Exit code 1 when a --fail-if rule holds, else 4 when some image and layer did not converge (the
    report is written in both cases and says so), else 0.
    """
    rules = parse_rules(fail_if)
    noise = {"tau": tau, "steps": steps, "samples": samples, "grid": grid, "sigma_max": sigma_max, "seed": seed}
    settings = opt.solver_settings(**noise, precision=precision, memory_format=memory_format, max_memory=max_memory)
    cache = opt.row_cache(no_cache)
    decoders = check_cache_dir() if ru or ctx.info_name == "ru" else None  # writable, before any work
    inputs = [
        model or default_model(),
        decoders,
        *(images or []),
        fg_mask,
        fg_boxes,
        train_images,
        cache and cache.root,
    ]
    out = check_output_folder(out, [p for p in inputs if p is not None], new_subfolder=new_subfolder)
    overrides = {
        "preset": opt.choice(preset),
        "scale": scale,
        "mean": mean,
        "std": std,
        "layout": opt.choice(layout),
        "bgr": bgr,
    }
    foreground = Foreground.parse(fg, fg_mask, fg_boxes)
    session = open_session(
        model,
        images,
        layer,
        preprocessing_overrides=overrides,
        input_name=input_name,
        input_shape=input_shape,
        device=opt.choice(device),
    )
    if foreground:
        foreground.masks(session.images)  # a box outside the images fails now, before any estimate
    if not as_json and not ray:
        _print_estimate(session, settings)
    with stage_progress(as_json) as progress:
        report = run_analysis(
            session,
            images,
            settings=settings,
            foreground=foreground,
            ru=ru or ctx.info_name == "ru",
            train_images=[train_images] if train_images else None,
            retrain=retrain,
            cache=cache,
            ray=ray,
            progress=progress,
        )
    report = audited(report, rules)
    folder = write_report(report, out, new_subfolder=new_subfolder)
    if as_json:
        print(json.dumps(summary_json(report, folder), indent=2))
    else:
        _print_summary(report, folder)
    raise_verdict(report.audit, unconverged_results(report), "report")


def _print_estimate(session, settings) -> None:
    """Before a long run, its predicted time and peak memory (a short probe of forward + backward)."""
    rows = all_rows(session)
    guess = estimate_rows(session, rows, settings)
    if guess.seconds > ESTIMATE_ABOVE or not guess.fits:
        console.estimate(len(rows), guess.seconds, guess.predicted_peak, guess.budget, guess.fits)


def _print_summary(report, folder: Path) -> None:
    console.dim(f"{report.crosscheck.note}; device {report.device}; {report.seconds:.1f} s")
    for note in report.notes:
        console.note(note)
    table = Table(title=f"information discarding, τ={report.settings.tau} (nats per input value)")
    has_ru = any(r.ru is not None for r in report.results)
    columns = ["layer", "depth", "CID", "ΔCID", "concentration", "D/τ", "images"]
    columns += ["RU", "PSNR dB"] if has_ru else []
    for column in columns:
        table.add_column(column, justify="left" if column == "layer" else "right")
    for row in report.layer_means():
        extra = [fmt(row["ru"]), fmt(row["decoder_psnr"])] if has_ru else []
        table.add_row(
            escape(row["layer"]),
            f"{row['depth']:.2f}",
            fmt(row["cid"]),
            fmt(row["delta_cid"]),
            fmt(row["concentration"]),
            fmt(row["d_over_tau"]),
            str(row["n_images"]),
            *extra,
        )
    stdout.print(table)
    stdout.print(f"report: {folder / 'report.html'}", markup=False)
