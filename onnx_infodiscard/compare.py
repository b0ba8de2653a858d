"""`compare`: the same images through several models, layers aligned by relative depth.

Each model is analysed on its own (its card, preprocessing and layers) with the same solver
settings, so τ and the canonical [0, 1] input space make the numbers comparable (METHOD §1). Layers
of different networks are put side by side by relative depth (`Layer.depth`, 0 at the input, 1 at
the deepest tensor): the table lists every model's chosen layers with their depth, the plot draws
CID and concentration against depth with one curve per model.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .analysis import analyze
from .foreground import Foreground
from .results import SCHEMA_VERSION, Report
from .rowcache import RowCache
from .audit import Rule, RuleOutcome, evaluate
from .errors import InputError
from .perturb import SolverSettings

COLUMNS = ("model", "layer", "index", "op_type", "depth", "cid", "delta_cid", "concentration", "converged",
           "n_converged", "n_images")
FILES = ("comparison.json", "comparison.csv", "comparison.png", "comparison.html")


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
                    entry["layers"][name] = {k: getattr(near, k) for k in ("layer", "depth", "cid", "delta_cid",
                                                                           "concentration", "converged")}
            aligned.append(entry)
        return aligned

    def to_json(self) -> dict:
        from . import __version__
        from .report import summary_json

        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "comparison",
            "tool_version": __version__,
            "models": [
                {"name": name, **_model_json(report)} for name, report in zip(self.models, self.reports)
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
    cache: RowCache | None = None,
    ray: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Comparison:
    """Analyse every model on the same images with the same settings; align by relative depth.

    `layers` applies to every model; None: each model's card `suggested_layers`, else `auto`.
    With no images, the image folder that every model's card names, when they agree.
    `rules` (`audit.parse_rule`) are judged on each model; `cache` and `ray` as for `analyze` (a
    comparison with one more model solves only that model's rows); `progress(stage, advance, total)` as for
    `analyze`, with the model's name in front of each stage.
    """
    if not models:
        raise InputError("give at least one MODEL to compare (two or more to compare anything)")
    start = time.perf_counter()
    paths = [Path(m) for m in models]
    names = display_names(paths)
    if not images:
        images = _shared_card_images(paths)
    reports = []
    for name, path in zip(names, paths):
        advance = (lambda stage, a, t, name=name: progress(f"{name}: {stage}", a, t)) if progress else None
        reports.append(analyze(path, list(images), list(layers) if layers else None, settings=settings,
                               foreground=foreground, device=device, cache=cache, ray=ray, progress=advance))
    rows = tuple(row for name, report in zip(names, reports) for row in _rows(name, report))
    comparison = Comparison(tuple(names), tuple(reports), rows)
    outcomes = tuple(evaluate(rules, audit_table(comparison))) if rules else ()
    return Comparison(tuple(names), tuple(reports), rows, outcomes, time.perf_counter() - start)


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
        raise InputError("no --images given and the models' cards name different image folders; "
                         "give --images DIR so that every model sees the same images")
    return [folders.pop()]


def _rows(name: str, report: Report) -> list[ComparedLayer]:
    rows = []
    for mean in report.layer_means():
        total = sum(1 for r in report.results if r.layer == mean["layer"])
        rows.append(ComparedLayer(
            model=name, layer=mean["layer"], index=mean["index"], op_type=mean["op_type"], depth=mean["depth"],
            cid=mean["cid"], delta_cid=mean["delta_cid"], concentration=mean["concentration"],
            converged=mean["n_images"] == total, n_converged=mean["n_images"], n_images=total,
        ))
    return rows


def _model_json(report: Report) -> dict:
    return {
        "path": report.model_path, "sha256": report.model_sha256, "input": report.input_name,
        "input_shape": list(report.input_shape), "preprocessing": report.preprocessing.to_json(),
        "foreground": report.foreground, "crosscheck_passed": report.crosscheck.passed,
        "converged": report.converged, "layers": len(report.layers), "images": len(report.images),
    }


# ---------------------------------------------------------------------------------------------
# writing


def check_output_folder(out_dir: str | Path) -> Path:
    """Up front: `--out` can be created, or replaced (empty, or an earlier report or comparison)."""
    from .report import check_output_folder as check_folder

    return check_folder(Path(out_dir), "comparison.json")


def write_comparison(comparison: Comparison, out_dir: str | Path) -> Path:
    """Write comparison.json, .csv, .png and a self-contained .html into `out_dir`, atomically."""
    from .report import json_text, write_folder

    def write(folder: Path) -> None:
        (folder / "comparison.json").write_text(json_text(comparison.to_json()), encoding="utf-8")
        _write_csv(comparison, folder / "comparison.csv")
        png = plot_png(comparison)
        (folder / "comparison.png").write_bytes(png)
        (folder / "comparison.html").write_text(_html(comparison, png), encoding="utf-8")

    return write_folder(out_dir, write, "comparison.json")


def _write_csv(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in comparison.table():
            writer.writerow([_csv_value(row[column]) for column in COLUMNS])


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def plot(comparison: Comparison):
    """A matplotlib Figure (Agg canvas, no pyplot state): CID and, when measured, concentration
    against relative depth, one curve per model; hollow markers where some image did not converge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("cid", "CID (nats per input value)"), ("concentration", "concentration (nats)")]
    if all(row.concentration is None for row in comparison.rows):
        panels = panels[:1]
    figure = Figure(figsize=(5.0 * len(panels), 4.0), dpi=90)
    FigureCanvasAgg(figure)
    for k, (key, label) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), k + 1)
        for i, name in enumerate(comparison.models):
            points = sorted((r.depth, getattr(r, key), r.converged) for r in comparison.rows
                            if r.model == name and getattr(r, key) is not None)
            if not points:
                continue
            color = f"C{i % 10}"
            axis.plot([p[0] for p in points], [p[1] for p in points], "-", color=color, label=name)
            for x, y, ok in points:
                axis.plot([x], [y], "o", color=color, markerfacecolor=color if ok else "white")
        if key == "concentration":
            axis.axhline(0.0, color="0.3", linewidth=0.8)
        axis.set_xlabel("relative layer depth")
        axis.set_ylabel(label)
        axis.set_xlim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    settings = comparison.reports[0].settings if comparison.reports else SolverSettings()
    images = len(comparison.reports[0].images) if comparison.reports else 0
    figure.suptitle(f"{len(comparison.models)} model(s), {images} image(s), τ = {settings.tau:g}", fontsize=10)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.88, wspace=0.28)
    return figure


def plot_png(comparison: Comparison) -> bytes:
    buffer = io.BytesIO()
    plot(comparison).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _html(comparison: Comparison, png: bytes) -> str:
    from .report import CSS

    e = lambda v: html.escape(_fmt(v))  # noqa: E731
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>infodiscard comparison: {html.escape(', '.join(comparison.models))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Information discarding: {len(comparison.models)} models compared</h1>",
        f'<p class="muted">{comparison.seconds:.1f} s · data: <a href="comparison.json">comparison.json</a>, '
        '<a href="comparison.csv">comparison.csv</a></p>',
    ]
    if comparison.outcomes:
        failed = [o for o in comparison.outcomes if o.failed]
        verdict = (f'<div class="alert"><b>AUDIT FAILED: {len(failed)} of {len(comparison.outcomes)} rule(s) held</b></div>'
                   if failed else f'<p class="ok">Audit passed: none of {len(comparison.outcomes)} rule(s) held.</p>')
        parts.append("<h2>Audit</h2>" + verdict + "<table><thead><tr><th>model</th><th>rule</th><th>layer</th>"
                     "<th>value</th><th>result</th></tr></thead><tbody>")
        for o in comparison.outcomes:
            css = ' class="unconverged"' if o.failed else ""
            parts.append(f"<tr{css}><td>{e(o.model)}</td><td><code>{html.escape(o.rule)}</code></td>"
                         f"<td>{html.escape(o.layer)}</td><td class=\"num\">{e(o.value)}</td>"
                         f"<td>{'FAILED' if o.failed else 'ok'}{(' – ' + html.escape(o.reason)) if o.reason else ''}"
                         "</td></tr>")
        parts.append("</tbody></table>")
    if not comparison.converged:
        parts.append('<div class="alert">Some (image, layer) results did not converge; they are left out of the '
                     "means (hollow markers, converged = NO). Try more --steps.</div>")
    parts.append("<h2>CID and concentration versus relative depth</h2>")
    parts.append(f'<img alt="CID and concentration versus depth" '
                 f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    parts.append('<p class="muted">CID: mean pixel-wise entropy of the largest input noise the layer tolerates at '
                 "distortion τ, nats per canonical input value (high = discarded). ΔCID: CID minus the input's own. "
                 "Concentration: mean background H − mean foreground H (positive = keeps the object).</p>")
    parts.append("<h2>Layers by relative depth</h2><table><thead><tr>"
                 + "".join(f"<th>{c}</th>" for c in ("model", "layer", "op", "depth", "CID", "ΔCID",
                                                     "concentration", "converged"))
                 + "</tr></thead><tbody>")
    for r in sorted(comparison.rows, key=lambda r: (r.depth, comparison.models.index(r.model))):
        css = "" if r.converged else ' class="unconverged"'
        parts.append(f"<tr{css}><td>{e(r.model)}</td><td><code>{html.escape(r.layer)}</code></td><td>{e(r.op_type)}</td>"
                     + "".join(f'<td class="num">{e(v)}</td>' for v in (r.depth, r.cid, r.delta_cid, r.concentration))
                     + f"<td>{r.n_converged} / {r.n_images}</td></tr>")
    parts.append("</tbody></table><h2>Models</h2><table><thead><tr><th>model</th><th>path</th><th>input</th>"
                 "<th>preprocessing</th><th>foreground</th><th>cross-check</th></tr></thead><tbody>")
    for name, report in zip(comparison.models, comparison.reports):
        p = report.preprocessing
        spec = f"scale {p.scale:g}, mean {list(p.mean)}, std {list(p.std)}, {p.layout}{', BGR' if p.bgr else ''} ({p.source})"
        parts.append(f"<tr><td>{e(name)}</td><td><code>{html.escape(report.model_path)}</code></td>"
                     f"<td>{html.escape(report.input_name)} {'×'.join(map(str, report.input_shape))}</td>"
                     f"<td>{html.escape(spec)}</td><td>{e(report.foreground)}</td>"
                     f"<td>{'passed' if report.crosscheck.passed else 'FAILED'}</td></tr>")
    parts.append("</tbody></table>")
    if comparison.reports:
        settings = asdict(comparison.reports[0].settings)
        parts.append("<h2>Parameters</h2><table><tbody>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{e(v)}</td></tr>" for k, v in settings.items()) + "</tbody></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
