"""`infodiscard compare`: the same images through every model, aligned by relative depth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnx_infodiscard import Foreground
from onnx_infodiscard.audit import parse_rules, raise_verdict, unconverged_results
from onnx_infodiscard.compare import compare as run_compare
from onnx_infodiscard.output import check_output_folder, json_text
from onnx_infodiscard.output.comparison import write_comparison
from onnx_infodiscard_cli import options as opt
from onnx_infodiscard_cli.console import fmt, stage_progress, stdout

VERDICTS = {"holds", "contradicted", "inconclusive"}


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    models: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Two or more .onnx models (or none, with --groups).", show_default=False),
    ] = None,
    groups: Annotated[
        Optional[Path],
        typer.Option(
            "--groups",
            help="A STUDY.toml: named groups of models and hypotheses on them, each answered with a "
            "bootstrap interval and a verdict (holds / contradicted / inconclusive).",
        ),
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="CSV file,label (a boxes CSV's label column works): each model's accuracy beside its metrics.",
        ),
    ] = None,
    max_images: Annotated[
        Optional[int],
        typer.Option("--max-images", min=2, help="With --groups: this many of the study's images, evenly spread."),
    ] = None,
    images: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--images",
            "-i",
            help="Image files or folders, the same for every model; repeatable "
            "(default: the folder every model's card names).",
        ),
    ] = None,
    layers: Annotated[
        Optional[list[str]],
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Layer name, index, glob or 'auto', the same for every model; repeatable "
            "(default: each card's suggested layers, else auto).",
        ),
    ] = None,
    tau: opt.Tau = opt.SOLVER.tau,
    steps: opt.Steps = opt.SOLVER.steps,
    samples: opt.Samples = opt.SOLVER.samples,
    seed: opt.Seed = opt.SOLVER.seed,
    grid: opt.Grid = opt.SOLVER.grid,
    device: opt.DeviceOpt = "auto",
    fg: opt.Fg = None,
    fg_mask: opt.FgMask = None,
    fg_boxes: opt.FgBoxes = None,
    fail_if: opt.FailIf = None,
    out: opt.Out = Path("infodiscard-compare"),
    max_memory: opt.MaxMemory = None,
    no_cache: opt.NoCache = False,
    ray: opt.Ray = None,
    new_subfolder: opt.NewSubfolder = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison table and audit as JSON.")] = False,
) -> None:
    """Run the same images through every model and compare CID and concentration by relative depth.

    Writes comparison.json (table, depth alignment, audit outcomes, each model's summary),
    comparison.csv, comparison.png and a self-contained comparison.html. Exit code 1 when a
    --fail-if rule holds (the outputs are still written and list the outcomes), else 4 when some
    image and layer did not converge, else 0.
    """
    settings = opt.solver_settings(tau=tau, steps=steps, samples=samples, seed=seed, grid=grid, max_memory=max_memory)
    cache = opt.row_cache(no_cache)
    _check_mode(
        groups,
        {
            "MODELS": models,
            "--images": images,
            "--layers": layers,
            "--labels": labels,
            "--fg": fg,
            "--fg-mask": fg_mask,
            "--fg-boxes": fg_boxes,
        },
        max_images,
    )
    if groups is not None:
        return _study(
            groups, settings, max_images, opt.choice(device), fail_if, cache, ray, out, new_subfolder, as_json
        )
    rules = parse_rules(fail_if)
    inputs = [*(models or []), *(images or []), fg_mask, fg_boxes, cache and cache.root]
    out = check_output_folder(out, [p for p in inputs if p is not None], new_subfolder=new_subfolder)
    foreground = Foreground.parse(fg, fg_mask, fg_boxes)
    with stage_progress(as_json) as progress:
        comparison = run_compare(
            models,
            images,
            layers,
            settings=settings,
            foreground=foreground,
            device=opt.choice(device),
            rules=rules,
            labels=labels,
            cache=cache,
            ray=ray,
            progress=progress,
        )
    folder = write_comparison(comparison, out, new_subfolder=new_subfolder)
    if as_json:
        data = comparison.to_json()
        print(json_text({k: data[k] for k in ("models", "converged", "table", "audit")} | {"out": str(folder)}), end="")
    else:
        _print_table(comparison, folder)
    unconverged = [
        label
        for name, report in zip(comparison.models, comparison.reports)
        for label in unconverged_results(report, f"{name}:")
    ]
    raise_verdict(comparison.outcomes, unconverged, "comparison")


def _check_mode(groups: Path | None, study_owned: dict, max_images: int | None) -> None:
    """A study names its own models, images, layers, labels and foreground; an option that would be
    silently ignored in one mode is refused instead."""
    from onnx_infodiscard.errors import InputError

    if groups is None:
        if max_images is not None:
            raise InputError("--max-images needs --groups (a study); pass fewer --images instead", option="max_images")
        return
    given = [name for name, value in study_owned.items() if value]
    if given:
        raise InputError(
            f"with --groups the study names its own models, images, layers, labels and foreground: drop "
            f"{', '.join(given)} or put it in {groups.name}",
            option="groups",
        )


def _study(path: Path, settings, max_images, device, fail_if, cache, ray, out, new_subfolder, as_json) -> None:
    """`compare --groups`: the study's hypotheses answered; `--fail-if` names verdicts that fail the run."""
    from onnx_infodiscard.errors import AuditFailed, InputError
    from onnx_infodiscard.study import read_study, run_study, write_study

    verdicts = {v.strip().lower() for v in fail_if or []}
    if verdicts - VERDICTS:
        raise InputError(
            f"with --groups, give verdicts that fail the run: {', '.join(sorted(VERDICTS))}; "
            f"got {', '.join(sorted(verdicts - VERDICTS))}",
            option="fail_if",
        )
    study = read_study(path)  # every check before any analysis
    out = check_output_folder(
        out,
        [path, *study.images, *[m.path for m in study.models], *([cache.root] if cache else [])],
        new_subfolder=new_subfolder,
    )
    with stage_progress(as_json) as progress:
        result = run_study(
            study, settings=settings, max_images=max_images, device=device, cache=cache, ray=ray, progress=progress
        )
    folder = write_study(result, out, new_subfolder=new_subfolder)
    if as_json:
        print(json_text(result.to_json() | {"out": str(folder)}), end="")
    else:
        table = Table(title=f"{escape(study.title or path.name)}: τ={settings.tau}, {len(result.images)} images")
        for column in ("hypothesis", "effect", "95 % CI", "verdict"):
            table.add_column(column, justify="left" if column in ("hypothesis", "verdict") else "right")
        for r in result.results:
            table.add_row(escape(r.hypothesis.text), f"{r.effect:+.3f}", f"[{r.low:+.3f}, {r.high:+.3f}]", r.verdict)
        stdout.print(table)
        stdout.print(f"study: {folder / 'study.html'}", markup=False)
    failed = [r.hypothesis.text for r in result.results if r.verdict in verdicts]
    if failed:
        raise AuditFailed(f"{len(failed)} hypotheses have a verdict named by --fail-if: {'; '.join(failed[:3])}")


def _print_table(comparison, folder: Path) -> None:
    table = Table(
        title=f"information discarding by relative depth, τ={comparison.reports[0].settings.tau} (nats per input value)"
    )
    for column in ("model", "layer", "depth", "CID", "ΔCID", "concentration", "converged"):
        table.add_column(column, justify="left" if column in ("model", "layer") else "right")
    for r in sorted(comparison.rows, key=lambda r: (r.depth, comparison.models.index(r.model))):
        table.add_row(
            escape(r.model),
            escape(r.layer),
            f"{r.depth:.2f}",
            fmt(r.cid),
            fmt(r.delta_cid),
            fmt(r.concentration),
            f"{r.n_converged}/{r.n_images}",
        )
    stdout.print(table)
    for outcome in comparison.outcomes:
        style = "red" if outcome.failed else "green"
        stdout.print(f"[{style}]audit: {escape(outcome.describe())}[/{style}]")
    stdout.print(f"comparison: {folder / 'comparison.html'}", markup=False)
