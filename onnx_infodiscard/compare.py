"""`compare`: the same images through several models, layers aligned by relative depth.

Each model is analysed on its own (its card, preprocessing and layers) with the same solver
settings, so τ and the canonical [0, 1] input space make the numbers comparable (METHOD §1). Layers
of different networks are put side by side by relative depth (`Layer.depth`, 0 at the input, 1 at
the deepest tensor): the table lists every model's chosen layers with their depth, the plot draws
CID and concentration against depth with one curve per model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from .accuracy import accuracy, read_labels
from .analysis import analyze
from .audit import Rule, RuleOutcome, evaluate
from .errors import InputError
from .execute import ray_pool
from .foreground import Foreground
from .images import find_images
from .output import SCHEMA_VERSION, check_output_folder  # noqa: F401  (check_output_folder: re-exported)
from .output.comparison import COLUMNS, FILES, plot, plot_png, write_comparison  # noqa: F401  (re-exported)
from .perturb import SolverSettings
from .results import Report
from .rowcache import RowCache


@dataclass(frozen=True)
class ComparedLayer:
    """One model's layer: metrics averaged over the images whose result converged."""

    model: str
    layer: str
    index: int  # in the model's graph
    op_type: str
    depth: float  # relative, 0 at the input, 1 at the deepest tensor
    cid: float | None  # nats per input value
    delta_cid: float | None  # nats per input value, CID − the input's own CID
    concentration: float | None  # nats, mean background H − mean foreground H; None without a foreground
    converged: bool  # every image converged at this layer
    n_converged: int
    n_images: int


@dataclass(frozen=True)
class Comparison:
    """Every model's report, the aligned table, and the audit outcomes when rules were given."""

    models: tuple[str, ...]  # display names, unique, in the order given
    reports: tuple[Report, ...] = field(repr=False)
    rows: tuple[ComparedLayer, ...]
    outcomes: tuple[RuleOutcome, ...] = ()
    seconds: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # model -> top-1 accuracy (with labels)

    @property
    def converged(self) -> bool:
        return all(report.converged for report in self.reports)

    @property
    def audit_failed(self) -> bool:
        return any(outcome.failed for outcome in self.outcomes)

    def table(self) -> list[dict]:
        """The rows as dicts, in the columns of comparison.csv."""
        return [asdict(row) for row in self.rows]

    def aligned(self) -> list[dict]:
        """Layers side by side: for each layer of the model with the fewest chosen layers, every
        model's layer nearest in relative depth."""
        by_model = {name: [r for r in self.rows if r.model == name] for name in self.models}
        reference = min(self.models, key=lambda name: len(by_model[name]))
        aligned = []
        for anchor in by_model[reference]:
            entry = {"depth": anchor.depth, "reference": reference, "layers": {}}
            for name, rows in by_model.items():
                if rows:
                    near = min(rows, key=lambda r: (abs(r.depth - anchor.depth), r.depth))
                    entry["layers"][name] = {
                        k: getattr(near, k)
                        for k in ("layer", "depth", "cid", "delta_cid", "concentration", "converged")
                    }
            aligned.append(entry)
        return aligned

    def to_json(self) -> dict:
        from . import __version__
        from .output.analysis import summary_json

        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "comparison",
            "tool_version": __version__,
            "models": [
                {"name": name, **_model_json(report), "accuracy": self.accuracy.get(name)}
                for name, report in zip(self.models, self.reports)
            ],
            "parameters": asdict(self.reports[0].settings) if self.reports else {},
            "converged": self.converged,
            "table": self.table(),
            "aligned": self.aligned(),
            "audit": {"failed": self.audit_failed, "outcomes": [o.to_json() for o in self.outcomes]},
            "summaries": {name: summary_json(report) for name, report in zip(self.models, self.reports)},
            "seconds": round(self.seconds, 3),
        }


def compare(
    models: Sequence[str | Path],
    images: Sequence[str | Path] | None = None,
    layers: Sequence[str] | None = None,
    *,
    settings: SolverSettings = SolverSettings(),
    foreground: Foreground | None = None,
    device: str = "auto",
    rules: Sequence[Rule] = (),
    labels: str | Path | None = None,
    cache: RowCache | None = None,
    ray: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Comparison:
    """Analyse every model on the same images with the same settings; align by relative depth.

    `layers` applies to every model; None: each model's card `suggested_layers`, else `auto`.
    With no images, the image folder that every model's card names, when they agree.
    With `labels` (a CSV `file,label`, e.g. a boxes CSV; index or class name of the card), each
    model's accuracy on the images, by onnxruntime on its original graph. `rules`
    (`audit.parse_rule`) are judged on each model; `cache` and `ray` as for `analyze` (a comparison
    with one more model solves only that model's rows); `progress(stage, advance, total)` as for
    `analyze`, with the model's name in front of each stage.
    """
    if not models:
        raise InputError("give at least one MODEL to compare (two or more to compare anything)")
    start = time.perf_counter()
    paths = [Path(m) for m in models]
    names = display_names(paths)
    if not images:
        images = _shared_card_images(paths)
    raw_labels = read_labels(labels) if labels is not None else None
    found = find_images(list(images))
    accuracies = (
        {name: accuracy(path, found, raw_labels).accuracy for name, path in zip(names, paths)}
        if raw_labels is not None
        else {}
    )  # before the long part, so missing labels fail at once
    reports = []
    with ray_pool(ray) as pool:  # with Ray, one set of workers for every model
        run = partial(analyze, settings=settings, foreground=foreground, device=device, cache=cache, ray=pool)
        for name, path in zip(names, paths):
            advance = (lambda stage, a, t, name=name: progress(f"{name}: {stage}", a, t)) if progress else None
            reports.append(run(path, list(images), list(layers) if layers else None, progress=advance))
    rows = tuple(row for name, report in zip(names, reports) for row in compared_layers(name, report))
    comparison = Comparison(tuple(names), tuple(reports), rows, accuracy=accuracies)
    outcomes = tuple(evaluate(rules, audit_table(comparison))) if rules else ()
    return Comparison(tuple(names), tuple(reports), rows, outcomes, time.perf_counter() - start, accuracies)


def audit_table(comparison: Comparison) -> list[dict]:
    """The per-layer table `audit.evaluate` judges: `n_images` counts the converged images."""
    return [{**asdict(row), "n_images": row.n_converged} for row in comparison.rows]


def display_names(paths: Sequence[Path]) -> list[str]:
    """The file stems; a stem that repeats gets its folder (`a/m`, `b/m`), then its position."""
    stems = [p.stem for p in paths]
    names = [s if stems.count(s) == 1 else f"{p.parent.name}/{s}" for p, s in zip(paths, stems)]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _shared_card_images(paths: Sequence[Path]) -> list[Path]:
    from .card import ModelCard
    from .load import load_model

    folders = set()
    for path in paths:
        card = ModelCard.for_model(path, load_model(path).proto)
        if not card.get("images"):
            raise InputError(f"no --images given and the card of {path.name} names none; give --images DIR")
        folders.add(card.image_folder(path, "images").resolve())
    if len(folders) > 1:
        raise InputError(
            "no --images given and the models' cards name different image folders; "
            "give --images DIR so that every model sees the same images"
        )
    return [folders.pop()]


def compared_layers(name: str, report: Report) -> list[ComparedLayer]:
    """One row per layer of `report`: its means over the converged images, under the model's `name`."""
    rows = []
    for mean in report.layer_means():
        total = sum(1 for r in report.results if r.layer == mean["layer"])
        rows.append(
            ComparedLayer(
                model=name,
                layer=mean["layer"],
                index=mean["index"],
                op_type=mean["op_type"],
                depth=mean["depth"],
                cid=mean["cid"],
                delta_cid=mean["delta_cid"],
                concentration=mean["concentration"],
                converged=mean["n_images"] == total,
                n_converged=mean["n_images"],
                n_images=total,
            )
        )
    return rows


def _model_json(report: Report) -> dict:
    return {
        "path": report.model_path,
        "sha256": report.model_sha256,
        "input": report.input_name,
        "input_shape": list(report.input_shape),
        "preprocessing": report.preprocessing.to_json(),
        "foreground": report.foreground,
        "crosscheck_passed": report.crosscheck.passed,
        "converged": report.converged,
        "layers": len(report.layers),
        "images": len(report.images),
    }
