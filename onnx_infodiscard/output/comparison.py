"""The comparison folder: comparison.json, comparison.csv, comparison.png and a self-contained comparison.html."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import figures
from .encode import json_text, write_csv
from .folders import write_folder
from .html import cell, escape, head, png_uri

if TYPE_CHECKING:
    from ..compare import Comparison

MARKER = "comparison.json"
COLUMNS = tuple("model layer index op_type depth cid delta_cid concentration converged n_converged n_images".split())
FILES = ("comparison.json", "comparison.csv", "comparison.png", "comparison.html")


def write_comparison(comparison: Comparison, out_dir: str | Path, *, new_subfolder: bool = False) -> Path:
    """Write comparison.json, .csv, .png and a self-contained .html into `out_dir`, atomically."""

    def write(folder: Path) -> None:
        (folder / MARKER).write_text(json_text(comparison.to_json()), encoding="utf-8")
        write_csv(folder / "comparison.csv", COLUMNS, ([row[c] for c in COLUMNS] for row in comparison.table()))
        png = plot_png(comparison)
        (folder / "comparison.png").write_bytes(png)
        (folder / "comparison.html").write_text(comparison_html(comparison, png), encoding="utf-8")

    return write_folder(out_dir, write, MARKER, new_subfolder=new_subfolder)


def plot(comparison: Comparison):
    """The comparison figure (a matplotlib Figure on an Agg canvas): see `figures.comparison_figure`."""
    return figures.comparison_figure(comparison)


def plot_png(comparison: Comparison) -> bytes:
    return figures.png_bytes(plot(comparison))


def _audit(comparison: Comparison) -> list[str]:
    failed = [o for o in comparison.outcomes if o.failed]
    n = len(comparison.outcomes)
    verdict = (
        f'<div class="alert"><b>AUDIT FAILED: {len(failed)} of {n} rule(s) held</b></div>'
        if failed
        else f'<p class="ok">Audit passed: none of {n} rule(s) held.</p>'
    )
    parts = [
        "<h2>Audit</h2>" + verdict + "<table><thead><tr><th>model</th><th>rule</th><th>layer</th>"
        "<th>value</th><th>result</th></tr></thead><tbody>"
    ]
    for o in comparison.outcomes:
        css = ' class="unconverged"' if o.failed else ""
        reason = (" – " + escape(o.reason)) if o.reason else ""
        parts.append(
            f"<tr{css}><td>{cell(o.model)}</td><td><code>{escape(o.rule)}</code></td>"
            f'<td>{escape(o.layer)}</td><td class="num">{cell(o.value)}</td>'
            f"<td>{'FAILED' if o.failed else 'ok'}{reason}</td></tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _layers(comparison: Comparison) -> list[str]:
    header = ("model", "layer", "op", "depth", "CID", "ΔCID", "concentration", "converged")
    parts = [
        "<h2>Layers by relative depth</h2><table><thead><tr>"
        + "".join(f"<th>{c}</th>" for c in header)
        + "</tr></thead><tbody>"
    ]
    for r in sorted(comparison.rows, key=lambda r: (r.depth, comparison.models.index(r.model))):
        css = "" if r.converged else ' class="unconverged"'
        parts.append(
            f"<tr{css}><td>{cell(r.model)}</td><td><code>{escape(r.layer)}</code></td><td>{cell(r.op_type)}</td>"
            + "".join(f'<td class="num">{cell(v)}</td>' for v in (r.depth, r.cid, r.delta_cid, r.concentration))
            + f"<td>{r.n_converged} / {r.n_images}</td></tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _models(comparison: Comparison) -> list[str]:
    parts = [
        "<h2>Models</h2><table><thead><tr><th>model</th><th>path</th><th>input</th>"
        "<th>preprocessing</th><th>foreground</th><th>cross-check</th></tr></thead><tbody>"
    ]
    for name, report in zip(comparison.models, comparison.reports):
        p = report.preprocessing
        spec = (
            f"scale {p.scale:g}, mean {list(p.mean)}, std {list(p.std)}, {p.layout}{', BGR' if p.bgr else ''} "
            f"({p.source})"
        )
        parts.append(
            f"<tr><td>{cell(name)}</td><td><code>{escape(report.model_path)}</code></td>"
            f"<td>{escape(report.input_name)} {'×'.join(map(str, report.input_shape))}</td>"
            f"<td>{escape(spec)}</td><td>{cell(report.foreground)}</td>"
            f"<td>{'passed' if report.crosscheck.passed else 'FAILED'}</td></tr>"
        )
    parts.append("</tbody></table>")
    if comparison.reports:
        settings = asdict(comparison.reports[0].settings)
        parts.append(
            "<h2>Parameters</h2><table><tbody>"
            + "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in settings.items())
            + "</tbody></table>"
        )
    return parts


def comparison_html(comparison: Comparison, png: bytes) -> str:
    """The self-contained page: audit, the figure, layers by depth, the models and the settings."""
    parts = [
        *head(f"infodiscard comparison: {', '.join(comparison.models)}"),
        f"<h1>Information discarding: {len(comparison.models)} models compared</h1>",
        f'<p class="muted">{comparison.seconds:.1f} s · data: <a href="comparison.json">comparison.json</a>, '
        '<a href="comparison.csv">comparison.csv</a></p>',
    ]
    if comparison.outcomes:
        parts += _audit(comparison)
    if not comparison.converged:
        parts.append(
            '<div class="alert">Some (image, layer) results did not converge; they are left out of the '
            "means (hollow markers, converged = NO). Try more --steps.</div>"
        )
    parts += [
        "<h2>CID and concentration versus relative depth</h2>",
        f'<img alt="CID and concentration versus depth" src="{png_uri(png)}">',
        '<p class="muted">CID: mean pixel-wise entropy of the largest input noise the layer tolerates at '
        "distortion τ, nats per canonical input value (high = discarded). ΔCID: CID minus the input's own. "
        "Concentration: mean background H − mean foreground H (positive = keeps the object).</p>",
        *_layers(comparison),
        *_models(comparison),
        "</body></html>\n",
    ]
    return "\n".join(parts)
