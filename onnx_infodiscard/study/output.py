"""A study's answers as CSV, one PNG per hypothesis, an HTML section, and a folder of all of them."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np

from ..output import json_text, write_folder
from .run import StudyResult
from .stats import HypothesisResult

CSV_COLUMNS = (
    "hypothesis",
    "kind",
    "metric",
    "depth",
    "depth2",
    "expected_sign",
    "effect",
    "ci_low",
    "ci_high",
    "verdict",
    "n_images",
    "n_models",
    "n_boot",
    "tau",
    "steps",
)
MARKER = "study.json"
COLOURS = {"holds": "#2a7d2a", "contradicted": "#b22222", "inconclusive": "#777777"}


def to_csv(result: StudyResult) -> str:
    """One row per hypothesis (effect, 95 % interval, verdict, τ, steps)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in result.results:
        row = r.to_json()
        writer.writerow(
            {
                **{k: row.get(k) for k in CSV_COLUMNS},
                "n_models": sum(len(v) for v in r.models.values()),
                "tau": result.settings.get("tau"),
                "steps": result.settings.get("steps"),
            }
        )
    return out.getvalue()


def plot_png(r: HypothesisResult) -> bytes:
    """Left: each model's value by group (or against accuracy); right: the bootstrap distribution."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    h = r.hypothesis
    if h.kind == "correlation":
        for g, names in r.models.items():
            left.scatter([r.accuracy[n] for n in names], [r.per_model[n] for n in names], label=g, s=18)
        left.set_xlabel("accuracy")
        left.legend(fontsize=7)
    else:
        for k, (_group, names) in enumerate(r.models.items()):
            values = [r.per_model[n] for n in names]
            left.scatter(np.full(len(values), k), values, s=18)
            left.hlines(np.nanmean(values), k - 0.25, k + 0.25, colors="k")
        left.set_xticks(range(len(r.models)), list(r.models), fontsize=8)
    unit = "" if h.kind == "correlation" else " (nats)"
    left.set_ylabel(f"{h.metric}[{h.depth:g}]" + (f" - [{h.depth2:g}]" if h.kind == "depths" else "") + unit)
    if len(r.replicates):
        right.hist(r.replicates, bins=40, color="#9bb7d4")
    right.axvline(0.0, color="k", lw=0.8)
    right.axvline(r.effect, color=COLOURS[r.verdict], lw=1.5)
    right.axvspan(r.low, r.high, color=COLOURS[r.verdict], alpha=0.15)
    right.set_xlabel("Spearman rho" if h.kind == "correlation" else "effect" + unit)
    right.set_title(f"{r.verdict}: {r.effect:.3g} [{r.low:.3g}, {r.high:.3g}]", fontsize=9, color=COLOURS[r.verdict])
    fig.suptitle(h.text, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def html_section(result: StudyResult, plots: bool = True) -> str:
    """`<section>` for the HTML report: a table of the claims, then each plot inline."""
    s = result.settings
    rows = []
    for r in result.results:
        rows.append(
            f"<tr><td><code>{html.escape(r.hypothesis.text)}</code></td><td>{r.effect:.4g}</td>"
            f"<td>[{r.low:.4g}, {r.high:.4g}]</td><td style='color:{COLOURS[r.verdict]}'><b>{r.verdict}</b>"
            f"</td><td>{sum(len(v) for v in r.models.values())}</td><td>{r.n_images}</td></tr>"
        )
    figures = (
        "".join(
            f"<figure><img alt='{html.escape(r.hypothesis.text)}' src='data:image/png;base64,"
            f"{base64.b64encode(plot_png(r)).decode()}'></figure>"
            for r in result.results
        )
        if plots
        else ""
    )
    acc = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in result.accuracy.items())
    return (
        f"<section id='study'><h2>Study {html.escape(result.study.title or result.study.path.name)}</h2>"
        f"<p>τ = {s.get('tau')}, {s.get('steps')} steps, {len(result.images)} images, "
        f"95 % bootstrap interval over images (paired) and models (within groups), "
        f"{result.results[0].n_boot if result.results else 0} replicates, seed {result.seed}.</p>"
        "<table><tr><th>hypothesis</th><th>effect</th><th>95 % CI</th><th>verdict</th><th>models</th>"
        f"<th>images</th></tr>{''.join(rows)}</table>"
        + (f"<p>Accuracy (onnxruntime, original graph): {acc}</p>" if acc else "")
        + figures
        + "</section>"
    )


def write_study(result: StudyResult, out_dir: str | Path, *, new_subfolder: bool = False) -> Path:
    """study.json, study.csv, study.html and one hypothesis_K_<slug>.png per claim, written as one
    safe output folder (manifest, atomic swap; see `output.write_folder`); returns the folder."""

    def write(folder: Path) -> None:
        (folder / "study.csv").write_text(to_csv(result))
        (folder / "study.html").write_text(
            f"<!doctype html><meta charset='utf-8'><title>study</title>{html_section(result)}\n"
        )
        for k, r in enumerate(result.results, start=1):
            slug = re.sub(r"[^a-z0-9]+", "_", r.hypothesis.text.lower()).strip("_")[:60]
            (folder / f"hypothesis_{k}_{slug}.png").write_bytes(plot_png(r))
        (folder / MARKER).write_text(json_text(result.to_json()))

    return write_folder(out_dir, write, MARKER, new_subfolder=new_subfolder)
