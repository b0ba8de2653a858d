"""`infodiscard` commands. Exit codes: 0 ok, 1 an audit rule (--fail-if) held, 2 bad usage or input,
3 conversion or cross-check failure, 4 analysis did not converge for some image and layer."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from onnx_infodiscard import InfodiscardError, __version__
from onnx_infodiscard.audit import evaluate, parse_rules, raise_on_failure
from onnx_infodiscard.check import open_model, prepare
from onnx_infodiscard.layers import list_layers
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard_cli.console import stage_progress, stderr, stdout
from onnx_infodiscard_cli.localize_command import register as register_localize_command
from onnx_infodiscard_cli.zoo_commands import register as register_zoo_commands

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how much of an input image's information each layer of an ONNX model discards.",
)

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


@app.command()
def analyze(
    model: Annotated[Optional[Path], typer.Argument(help="The .onnx model (default: the shipped digits CNN).", show_default=False)] = None,
    images: Annotated[Optional[list[Path]], typer.Argument(help="Image files, folders or .npy arrays (default: the card's images).", show_default=False)] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Layer name, index, glob or 'auto'; repeatable (default: the card's suggested layers, else auto).")] = None,
    tau: Annotated[float, typer.Option(help="Distortion budget D/(N·Var f) — the same for every layer and model.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Adam steps on log σ.")] = SolverSettings.steps,
    samples: Annotated[int, typer.Option(help="Noise samples per image and layer per step.")] = SolverSettings.samples,
    grid: Annotated[Optional[int], typer.Option(help="σ on a GRID×GRID lattice (default: one σ per pixel).")] = None,
    sigma_max: Annotated[float, typer.Option("--sigma-max", help="Largest σ, canonical units (1 = full pixel range).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise; same seed, same numbers.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="Autocast of the optimisation steps: fp32, bf16 or fp16 (D/τ is always measured in fp32).")] = "fp32",
    memory_format: Annotated[str, typer.Option("--memory-format", help="Layout of 4-D activations: auto (channels_last on CUDA), contiguous or channels_last. Same answers, other speed.")] = "auto",
    preset: Annotated[Optional[str], typer.Option(help="Preprocessing preset: imagenet, tf, raw01, raw255.")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Multiply the [0,1] image by this (e.g. 255).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std divided by after the mean.")] = None,
    layout: Annotated[Optional[str], typer.Option(help="The model's input layout: nchw or nhwc.")] = None,
    bgr: Annotated[Optional[bool], typer.Option("--bgr/--rgb", help="Feed channels as BGR.", show_default=False)] = None,
    fg: Annotated[Optional[str], typer.Option("--fg", help="Foreground box x0,y0,x1,y1 in image pixels, or 'center'.")] = None,
    fg_mask: Annotated[Optional[Path], typer.Option("--fg-mask", help="Foreground mask image (non-zero = object).")] = None,
    fg_boxes: Annotated[Optional[Path], typer.Option("--fg-boxes", help="CSV with columns file,x0,y0,x1,y1.")] = None,
    input_shape: InputShapeOpt = None,
    input_name: InputNameOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (written atomically).")] = Path("infodiscard-report"),
    ru: Annotated[bool, typer.Option("--ru", help="Also reconstruction uncertainty (trains or loads decoders).")] = False,
    train_images: Annotated[Optional[Path], typer.Option("--train-images", help="Decoder training images (default: the card's).")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train decoders anew instead of using the cache.")] = False,
    fail_if: Annotated[Optional[list[str]], typer.Option("--fail-if", help="Audit rule METRIC[LAYER] OP NUMBER, e.g. 'cid[-1] > 1.2'; exit 1 if any holds. Repeatable.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure how much of each image's information each chosen layer discards (CID maps)."""
    from onnx_infodiscard.analysis import Foreground, analyze as run_analysis
    from onnx_infodiscard.output import check_output_folder
    from onnx_infodiscard.output.analysis import summary_json, write_report

    rules = parse_rules(fail_if)
    settings = SolverSettings(tau=tau, steps=steps, samples=samples, grid=grid, sigma_max=sigma_max, seed=seed,
                              precision=precision, memory_format=memory_format)
    settings.validate()
    check_output_folder(out)
    overrides = {
        "preset": preset, "scale": scale, "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std"),
        "layout": _layout(layout), "bgr": bgr,
    }
    foreground = Foreground.parse(fg, fg_mask, fg_boxes)
    with stage_progress(as_json) as progress:
        report = run_analysis(
            model, images, layer, settings=settings, preprocessing_overrides=overrides,
            foreground=foreground, device=device, input_name=input_name,
            input_shape=parse_ints(input_shape, "--input-shape"), ru=ru,
            train_images=[train_images] if train_images else None, retrain=retrain, progress=progress,
        )
    if rules:
        report = dataclasses.replace(report, audit=tuple(evaluate(rules, report)))
    folder = write_report(report, out)
    if as_json:
        print(json.dumps(summary_json(report, folder), indent=2))
    else:
        _print_summary(report, folder)
    raise_on_failure(report.audit)
    if not report.converged:
        failed = [f"{r.image}:{r.layer} (D/τ={r.d_over_tau:.3f})" for r in report.results if not r.converged]
        stderr.print(f"error: {len(failed)} image/layer results did not converge: {', '.join(failed[:5])}; "
                     "they are marked in the report — try more --steps", markup=False)
        raise SystemExit(4)


def _with_defaults(command, **defaults):
    """The same command with other defaults: `ru` is `analyze --ru`, options and all."""
    signature = inspect.signature(command, eval_str=True)
    parameters = [p.replace(default=defaults[p.name]) if p.name in defaults else p
                  for p in signature.parameters.values()]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


app.command(
    "ru", help="Reconstruction uncertainty (RU) per layer, beside CID: `analyze --ru`, with every analyze option."
)(_with_defaults(analyze, ru=True))


register_zoo_commands(app)
register_localize_command(app)


def _print_summary(report, folder: Path) -> None:
    stderr.print(f"[dim]{report.crosscheck.note}; device {report.device}; {report.seconds:.1f} s[/dim]")
    for note in report.notes:
        stderr.print(f"[yellow]note: {note}[/yellow]")
    table = Table(title=f"information discarding, τ={report.settings.tau} (nats per input value)")
    has_ru = any(r.ru is not None for r in report.results)
    columns = ["layer", "depth", "CID", "ΔCID", "concentration", "D/τ", "images"] + (["RU", "PSNR dB"] if has_ru else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "layer" else "right")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for row in report.layer_means():
        extra = [fmt(row["ru"]), fmt(row["decoder_psnr"])] if has_ru else []
        table.add_row(row["layer"], f"{row['depth']:.2f}", fmt(row["cid"]), fmt(row["delta_cid"]),
                      fmt(row["concentration"]), fmt(row["d_over_tau"]), str(row["n_images"]), *extra)
    stdout.print(table)
    stdout.print(f"report: {folder / 'report.html'}")


def _layout(value: str | None) -> str | None:
    if value is None:
        return None
    if value.lower() not in ("nchw", "nhwc"):
        raise InfodiscardErrorUsage(f"--layout {value!r}: use nchw or nhwc")
    return value.lower()


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InfodiscardErrorUsage(f"{option} {text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


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
