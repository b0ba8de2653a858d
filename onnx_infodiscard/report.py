"""Write a `Report` to a folder: JSON, CSV, maps, plots and a self-contained HTML page.

The folder is written atomically: everything is built in a hidden temporary sibling and swapped
into place at the end, so a failed run never leaves a complete-looking report behind.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .results import SCHEMA_VERSION, LayerResult, Report
from .errors import InputError

#: At most this many images are drawn per layer figure (all of them are in the JSON, CSV and maps).
MAX_FIGURE_IMAGES = 8

CSV_COLUMNS = (
    "image", "layer", "layer_index", "depth", "cid", "cid_total", "delta_cid", "concentration",
    "saturated_fraction", "converged", "d_over_tau", "d_over_tau_se", "eval_samples", "steps", "seconds",
)
RU_COLUMNS = ("ru", "ru_converged", "ru_d_over_tau", "decoder_psnr")

ENTROPY_LABEL = "H (nats per value)"
RU_LABEL = "RU (nats per value)"
SENSITIVITY_LABEL = "sensitivity 1/σ² (max 1)"


# ---------------------------------------------------------------------------------------------
# public API


def write_report(report: Report, out_dir: Path) -> Path:
    """Write `report` into `out_dir` atomically and return the final folder (absolute).

    Files: report.json, metrics.csv, maps.npz, one layer_{index}_{name}.png per layer,
    cid_vs_depth.png and report.html (self-contained). An existing `out_dir` is replaced only when it
    is empty or holds an earlier report (a report.json); anything else raises `InputError`, as does an
    output folder that cannot be created or written. Any failure while writing removes the temporary
    folder and leaves an existing report untouched.
    """
    return write_folder(out_dir, lambda folder: _write_contents(report, folder), "report.json")


def write_folder(out_dir: Path | str, write: Callable[[Path], None], marker: str) -> Path:
    """Fill a hidden sibling folder with `write(folder)`, then swap it into place as `out_dir`.

    `out_dir` may replace only an empty folder or an earlier output of the same kind (its `marker`
    file holds a schema version). Any failure removes the temporary folder and leaves an existing
    output untouched: nothing half-written ever looks complete.
    """
    out_dir = check_output_folder(Path(out_dir), marker)
    parent = out_dir.parent
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.tmp-"))
    except OSError as err:
        raise InputError(
            f"cannot write the output folder {out_dir}: {parent} is not writable ({err.strerror or err}); "
            "choose another --out folder or fix its permissions"
        ) from None
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def summary_json(report: Report, out_dir: Path | str | None = None) -> dict:
    """The compact summary `--json` prints: model, parameters, per layer means, convergence, notes."""
    unconverged = [r for r in report.results if not r.converged]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": report.tool_version,
        "model": report.model_path,
        "sha256": report.model_sha256,
        "parameters": {**asdict(report.settings), "foreground": report.foreground, "device": report.device},
        "images": len(report.images),
        "converged": report.converged,
        "unconverged": [{"image": r.image, "layer": r.layer, "d_over_tau": r.d_over_tau} for r in unconverged],
        "layers": report.layer_means(),
        "crosscheck_passed": report.crosscheck.passed,
        "out": str(out_dir) if out_dir is not None else None,
        "seconds": round(report.seconds, 3),
        "notes": list(report.notes),
        "audit": report.audit_json(),
    }
    return json_safe(summary)


# ---------------------------------------------------------------------------------------------
# the output folder


def check_output_folder(out_dir: Path, marker: str = "report.json") -> Path:
    """Up front, before any work: the folder can be created (or replaced) and its parent written.

    An existing folder is replaced only when empty or holding an earlier output (`marker`, or a report).
    """
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out_dir.is_symlink() and out_dir.is_dir():
        out_dir = out_dir.resolve()
    if out_dir.parent == out_dir:
        raise InputError(f"--out {out_dir}: give a folder for the report, not the file system root")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is an existing file; give a folder path for the report (or remove the file)")
    if out_dir.is_dir() and not _replaceable(out_dir, marker):
        raise InputError(
            f"--out {out_dir} is a folder that holds other files and no earlier report; "
            "give a new or empty folder (it is replaced as a whole)"
        )
    # The nearest existing ancestor must be a folder we can write in.
    existing = out_dir.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"cannot create the report folder {out_dir}: {existing} is a file, not a folder; choose another --out folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the report folder {out_dir}: {existing} is not writable; "
            "choose another --out folder or fix its permissions"
        )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"cannot create the report folder {out_dir} ({err.strerror or err}); choose another --out folder"
        ) from None
    return out_dir


def _replaceable(folder: Path, marker: str) -> bool:
    """An empty folder, or one holding an earlier output (its `marker` JSON has a schema version)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    if not entries:
        return True
    for name in dict.fromkeys((marker, "report.json")):
        try:
            with (folder / name).open("rb") as handle:
                if b'"schema_version"' in handle.read(4096):
                    return True
        except OSError:
            continue
    return False


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old report is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# contents


def _write_contents(report: Report, folder: Path) -> None:
    (folder / "report.json").write_text(json_text(report.to_json()), encoding="utf-8")
    _write_csv(report, folder / "metrics.csv")
    _write_maps(report, folder / "maps.npz")
    images = _image_index(report)
    plots = []  # (file name, caption)
    for layer in report.layers:
        results = [r for r in report.results if r.layer == layer.name]
        if not results:
            continue
        name = f"layer_{layer.index}_{safe_name(layer.name)}.png"
        (folder / name).write_bytes(_plot_layer(report, layer, results, images))
        plots.append((name, layer))
    depth_png = _plot_depth(report)
    (folder / "cid_vs_depth.png").write_bytes(depth_png)
    (folder / "report.html").write_text(_html(report, folder, plots), encoding="utf-8")


def json_safe(value):
    """JSON-safe: NaN/inf to null, numpy scalars and arrays to Python, tuples and paths to lists/str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data) -> str:
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else ""
    return str(value)


def _write_csv(report: Report, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS + RU_COLUMNS)
        for r in report.results:
            ru = (r.ru.mean, r.ru.converged, r.ru.d_over_tau, r.ru.decoder_psnr) if r.ru else ("",) * len(RU_COLUMNS)
            writer.writerow([_csv_value(getattr(r, column)) for column in CSV_COLUMNS] + [_csv_value(v) for v in ru])


def _image_index(report: Report) -> list[int | None]:
    """For each result, the index of its image in `report.images` (the k-th result of a name and
    layer belongs to the k-th image of that name, so duplicate file names stay apart)."""
    positions: dict[str, list[int]] = {}
    for i, image in enumerate(report.images):
        positions.setdefault(image.name, []).append(i)
    seen: dict[tuple[str, str], int] = {}
    index = []
    for r in report.results:
        k = seen.get((r.image, r.layer), 0)
        seen[(r.image, r.layer)] = k + 1
        options = positions.get(r.image, [])
        index.append(options[k] if k < len(options) else None)
    return index


def _image_keys(report: Report) -> list[str]:
    """A unique name per result's image: the file name, with `#k` when the name repeats."""
    counts: dict[str, int] = {}
    for image in report.images:
        counts[image.name] = counts.get(image.name, 0) + 1
    keys = []
    for r, i in zip(report.results, _image_index(report)):
        keys.append(f"{r.image}#{i}" if i is not None and counts.get(r.image, 0) > 1 else r.image)
    return keys


def _write_maps(report: Report, path: Path) -> None:
    """maps.npz: `{image}|{layer}|entropy`, `|sensitivity`, `|log_sigma` (and `|ru`) per result."""
    arrays = {}
    for r, image in zip(report.results, _image_keys(report)):
        maps = {"entropy": r.entropy, "sensitivity": r.sensitivity, "log_sigma": r.log_sigma}
        if r.ru is not None:
            maps["ru"] = r.ru.map
        for kind, values in maps.items():
            key = f"{image}|{r.layer}|{kind}"
            if key in arrays:
                raise ValueError(f"two results share the map key {key!r}")
            arrays[key] = np.asarray(values, dtype=np.float32)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return safe[:60] or "layer"


# ---------------------------------------------------------------------------------------------
# plots (matplotlib Figure + Agg canvas: no global pyplot state)


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _gray(image: np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    image = np.asarray(image, dtype=np.float32)
    return image.mean(axis=0) if image.ndim == 3 else image


def _finite_range(maps: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in maps]) if maps else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return low, high


def _plot_layer(report: Report, layer, results: list[LayerResult], images: list[int | None]) -> bytes:
    """Per image: H over the grayscale image (one shared scale for the layer), sensitivity beside it.

    Drawn on a single full-figure axes whose data units are inches (tiles are placed images, titles
    are text, frames are rectangles): one Axes instead of one per panel keeps it fast.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    where = {id(r): i for r, i in zip(report.results, images)}
    shown = results[:MAX_FIGURE_IMAGES]
    low, high = _finite_range([r.entropy for r in shown])
    entropy_norm, sensitivity_norm = Normalize(low, high), Normalize(0.0, 1.0)
    entropy_cmap, sensitivity_cmap = colormaps["magma"], colormaps["viridis"]

    # geometry, inches
    tile, bar, gap, label = 2.6, 0.14, 0.12, 0.95
    title, header, margin = 0.52, 0.45, 0.12
    heights = [tile * min(max(r.entropy.shape[0] / max(r.entropy.shape[1], 1), 0.25), 2.0) for r in shown]
    has_ru = any(r.ru is not None for r in shown)
    step = tile + gap + bar + label
    columns = [margin + i * step for i in range(3 if has_ru else 2)]  # left edge of each tile column
    width = columns[-1] + step
    ru_norm = Normalize(*_finite_range([r.ru.map for r in shown if r.ru is not None])) if has_ru else None
    height = header + sum(h + title for h in heights) + margin
    figure = new_figure(width, height)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_axis_off()
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)

    depth = f", depth {layer.depth:.2f}" if layer.depth is not None else ""
    axis.text(width / 2, header * 0.45, f"layer {layer.index}: {_short(layer.name, 60)} ({layer.op_type}{depth})",
              ha="center", va="center", fontsize=11)
    top = header
    for r, h in zip(shown, heights):
        index = where.get(id(r))
        gray = None
        if index is not None and index < len(report.canonical_images):
            gray = _gray(report.canonical_images[index])
        overlay = entropy_cmap(entropy_norm(np.nan_to_num(r.entropy, nan=low, posinf=high, neginf=low)))[..., :3]
        if gray is not None and gray.shape == r.entropy.shape:
            overlay = 0.35 * np.clip(gray, 0, 1)[..., None] + 0.65 * overlay
        sensitivity = sensitivity_cmap(sensitivity_norm(np.nan_to_num(r.sensitivity)))[..., :3]
        y0 = top + title
        panels = [overlay, sensitivity]
        if has_ru:
            ru_map = r.ru.map if r.ru is not None else np.full_like(r.entropy, np.nan)
            panels.append(entropy_cmap(ru_norm(np.nan_to_num(ru_map, nan=ru_norm.vmin)))[..., :3])
        for x0, pixels in zip(columns, panels):
            axis.imshow(pixels, extent=(x0, x0 + tile, y0 + h, y0), aspect="auto", interpolation="nearest")
        status = f"CID {_fmt(r.cid)}  ΔCID {_fmt(r.delta_cid)}"
        if r.concentration is not None and math.isfinite(r.concentration):
            status += f"  conc {_fmt(r.concentration)}"
        if r.converged:
            left_title = f"{_short(r.image, 34)}\n{status}"
            right_title = f"sensitivity   D/τ {_fmt(r.d_over_tau)}"
            style = {"fontsize": 8, "color": "black"}
        else:
            left_title = f"NOT CONVERGED: {_short(r.image, 22)}\n{status}"
            right_title = f"NOT CONVERGED   D/τ {_fmt(r.d_over_tau)}"
            style = {"fontsize": 8, "color": "red", "fontweight": "bold"}
            for x0 in columns:
                axis.add_patch(Rectangle((x0, y0), tile, h, fill=False, edgecolor="red", linewidth=3))
        titles = [left_title, right_title]
        if has_ru and r.ru is not None:
            flag = "" if r.ru.converged else "NOT CONVERGED  "
            titles.append(f"{flag}RU {_fmt(r.ru.mean)}  D/τ {_fmt(r.ru.d_over_tau)}\ndecoder PSNR {_fmt(r.ru.decoder_psnr, 1)} dB")
        for x0, text in zip(columns, titles):
            axis.text(x0 + tile / 2, y0 - 0.05, text, ha="center", va="bottom", **style)
        top = y0 + h

    first, last = header + title, top
    bars = [
        (columns[0], ScalarMappable(entropy_norm, entropy_cmap), ENTROPY_LABEL),
        (columns[1], ScalarMappable(sensitivity_norm, sensitivity_cmap), SENSITIVITY_LABEL),
    ]
    if has_ru:
        bars.append((columns[2], ScalarMappable(ru_norm, entropy_cmap), RU_LABEL))
    for x0, mappable, text in bars:
        left = x0 + tile + gap
        cax = figure.add_axes((left / width, 1 - last / height, bar / width, (last - first) / height))
        colorbar = figure.colorbar(mappable, cax=cax)
        colorbar.set_label(text, fontsize=9)
        colorbar.ax.tick_params(labelsize=8)
    return png_bytes(figure)


def _plot_depth(report: Report) -> bytes:
    """Mean CID (with the input baseline), ΔCID and, when measured, concentration against depth."""
    means = report.layer_means()
    depth_of = {layer.name: layer.depth for layer in report.layers}
    has_concentration = any(
        r.concentration is not None and math.isfinite(r.concentration) for r in report.results
    )
    panels = [("cid", "CID (nats per value)"), ("delta_cid", "ΔCID = CID − input (nats per value)")]
    if has_concentration:
        panels.append(("concentration", "concentration (nats)"))
    figure = new_figure(4.2 * len(panels), 3.8)
    baselines = [image.cid_input for image in report.images if math.isfinite(image.cid_input)]
    for k, (key, label) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), k + 1)
        # every converged image as a faint dot; the mean over images as the line
        dots = [(depth_of.get(r.layer), getattr(r, key)) for r in report.results if r.converged]
        dots = [(x, y) for x, y in dots if x is not None and y is not None and math.isfinite(y)]
        if dots:
            axis.scatter([x for x, _ in dots], [y for _, y in dots], s=10, color="0.6", alpha=0.6,
                         label="per image", zorder=2)
        points = sorted((m["depth"], m[key], m["layer"]) for m in means
                        if m[key] is not None and m["depth"] is not None)
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], "o-", color="C0", label="mean over images",
                      zorder=3)
            for x, y, name in points:
                right = x > 0.75  # labels near the right edge go to the left of their point
                axis.annotate(_short(name, 18), (x, y), textcoords="offset points", xytext=(-3 if right else 3, 4),
                              ha="right" if right else "left", fontsize=6)
        if key == "cid" and baselines:
            axis.axhline(float(np.mean(baselines)), color="C3", linestyle="--", label="input (identity) baseline")
        if key in ("delta_cid", "concentration"):
            axis.axhline(0.0, color="0.3", linewidth=0.8)
        missing = [m["layer"] for m in means if m[key] is None]
        if key != "concentration" and missing:
            axis.text(0.02, 0.02, f"{len(missing)} layer(s) without a converged result", transform=axis.transAxes,
                      fontsize=7, color="red")
        axis.set_xlabel("relative layer depth")
        axis.set_ylabel(label, fontsize=9)
        axis.set_xlim(-0.05, 1.05)
        axis.grid(alpha=0.3)
        if points or dots:
            axis.legend(fontsize=7, loc="best")
    figure.suptitle(f"CID versus depth, {len(report.images)} image(s), τ = {report.settings.tau:g}", fontsize=10)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.86, wspace=0.35)
    return png_bytes(figure)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(float(value))
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: Menlo, Consolas, monospace; font-size: 0.9em; word-break: break-all; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
.alert { border: 2px solid #b00; background: #fff0f0; color: #b00; padding: 0.6em 1em; margin: 1em 0; }
tr.unconverged td { background: #fff0f0; color: #b00; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.muted { color: #666; font-size: 0.9em; }
"""


def _e(value) -> str:
    return html.escape(_fmt(value) if not isinstance(value, str) else value)


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset(), row_class=None) -> str:
    out = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in header], "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        css = row_class(k) if row_class else ""
        out.append(f'<tr class="{css}">' if css else "<tr>")
        for j, cell in enumerate(row):
            out.append(f'<td class="num">{_e(cell)}</td>' if j in numeric else f"<td>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _kv(pairs: list[tuple[str, object]]) -> str:
    return "<table><tbody>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs
    ) + "</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(report: Report, folder: Path, plots: list[tuple[str, object]]) -> str:
    unconverged = [r for r in report.results if not r.converged]
    per_layer_total = {layer.name: sum(1 for r in report.results if r.layer == layer.name) for layer in report.layers}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>infodiscard report: {html.escape(Path(report.model_path).name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Information discarding: {html.escape(Path(report.model_path).name)}</h1>",
        f'<p class="muted">onnx-infodiscard {html.escape(report.tool_version)} · {len(report.images)} image(s) × '
        f"{len(report.layers)} layer(s) · {report.seconds:.1f} s on {html.escape(report.device)} · "
        'data: <a href="report.json">report.json</a>, <a href="metrics.csv">metrics.csv</a>, '
        '<a href="maps.npz">maps.npz</a></p>',
    ]
    if unconverged:
        items = "".join(
            f"<li>{html.escape(r.image)} · {html.escape(r.layer)}: D/τ = {_e(r.d_over_tau)} "
            f"(± {_e(r.d_over_tau_se)})</li>" for r in unconverged
        )
        parts.append(
            f'<div class="alert"><b>{len(unconverged)} of {len(report.results)} result(s) did NOT CONVERGE</b> '
            f"(|D/τ − 1| &gt; {report.settings.tolerance:g} or too noisy). They are not results: they are "
            f"left out of the per-layer means and marked in red below. Try more --steps.<ul>{items}</ul></div>"
        )
    else:
        parts.append(f'<p class="ok">All {len(report.results)} results converged '
                     f"(|D/τ − 1| ≤ {report.settings.tolerance:g}).</p>")
    if report.audit:
        parts.append("<h2>Audit (--fail-if)</h2><ul>" + "".join(
            f'<li class="{"unconverged" if o.failed else ""}">{html.escape(o.describe())}</li>' for o in report.audit
        ) + "</ul>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")

    parts.append("<h2>Per-layer summary</h2>")
    parts.append('<p class="muted">Means over images with a converged result. CID: mean pixel-wise entropy '
                 "H<sub>uv</sub> = log σ<sub>uv</sub> + ½ log(2πe) of the largest noise the layer tolerates at "
                 "distortion τ (nats per input value; high = information discarded). ΔCID: CID minus the "
                 "input's own (identity layer) CID. Concentration: mean background H − mean foreground H "
                 "(positive = the layer keeps the object and discards the background).</p>")
    means = report.layer_means()
    has_ru = any(r.ru is not None for r in report.results)
    rows = []
    for m in means:
        rows.append([m["index"], m["layer"], m["op_type"], m["depth"],
                     f"{m['n_images']} / {per_layer_total.get(m['layer'], 0)}",
                     m["cid"], m["delta_cid"], m["concentration"], m["d_over_tau"]]
                    + ([m["ru"], m["decoder_psnr"]] if has_ru else []))
    parts.append(_table(
        ["#", "layer", "op", "depth", "converged", "CID", "ΔCID", "concentration", "D/τ"]
        + (["RU", "decoder PSNR (dB, held out)"] if has_ru else []), rows,
        numeric={0, 3, 5, 6, 7, 8, 9, 10},
        row_class=lambda k: "unconverged" if means[k]["n_images"] < per_layer_total.get(means[k]["layer"], 0) else "",
    ))

    parts.append("<h2>CID versus depth</h2>")
    parts.append(f'<img alt="CID versus depth" src="{_data_uri(folder / "cid_vs_depth.png")}">')

    parts.append("<h2>Maps per layer</h2>")
    parts.append('<p class="muted">Left: H<sub>uv</sub> (nats per value) over the grayscale image, one colour '
                 "scale per layer. Right: sensitivity s<sub>uv</sub> = 1/σ<sub>uv</sub>², scaled to a maximum "
                 "of 1 (use it for boxes and thresholds). With RU, third: the reconstruction uncertainty "
                 "½ log(2πe·E[(g(f(x'))−x)²]) per pixel (nats per value), beside its decoder's held-out PSNR. "
                 "Unconverged results are framed in red.</p>")
    for name, layer in plots:
        count = per_layer_total.get(layer.name, 0)
        parts.append(f"<h3>layer {layer.index}: <code>{html.escape(layer.name)}</code> "
                     f"({html.escape(str(layer.op_type))}, depth {_e(layer.depth)})</h3>")
        if count > MAX_FIGURE_IMAGES:
            parts.append(f'<p class="muted">Showing the first {MAX_FIGURE_IMAGES} of {count} images; every map is '
                         "in maps.npz and every number in metrics.csv.</p>")
        parts.append(f'<img alt="maps of layer {html.escape(layer.name, quote=True)}" src="{_data_uri(folder / name)}">')

    parts.append("<h2>Results per image and layer</h2>")
    image_rows = [[r.image, r.layer, r.cid, r.delta_cid, r.concentration, r.saturated_fraction,
                   "yes" if r.converged else "NOT CONVERGED", r.d_over_tau, r.d_over_tau_se, r.steps]
                  for r in report.results]
    parts.append(_table(
        ["image", "layer", "CID", "ΔCID", "concentration", "saturated", "converged", "D/τ", "± SE", "steps"],
        image_rows, numeric={2, 3, 4, 5, 7, 8, 9},
        row_class=lambda k: "" if report.results[k].converged else "unconverged",
    ))
    parts.append("<h2>Images</h2>")
    parts.append(_table(["image", "input CID (nats per value)", "foreground"],
                        [[i.name, i.cid_input, "yes" if i.has_foreground else "no"] for i in report.images],
                        numeric={1}))

    parts.append("<h2>Model</h2>")
    parts.append(_kv([
        ("path", report.model_path), ("sha256", report.model_sha256), ("input", report.input_name),
        ("input shape", "×".join(str(d) for d in report.input_shape)), ("device", report.device),
        ("batch safe", "yes" if report.batch_safe else "no (one sample at a time)"),
    ]))
    if report.passes:
        parts.append("<p>Normalisation passes:</p><ul>" +
                     "".join(f"<li>{html.escape(p)}</li>" for p in report.passes) + "</ul>")
    parts.append("<h2>Preprocessing</h2>")
    parts.append(_kv([(k, _join(v)) for k, v in report.preprocessing.to_json().items()]))
    parts.append("<h2>Parameters</h2>")
    parameters = {**asdict(report.settings), "foreground": report.foreground}
    parts.append(_kv([(k, _join(v)) for k, v in parameters.items()]))

    check = report.crosscheck
    parts.append("<h2>Cross-check against onnxruntime</h2>")
    verdict = '<span class="ok">passed</span>' if check.passed else '<span class="bad">FAILED</span>'
    parts.append(f"<p>{verdict} · provider {html.escape(check.provider)} · tolerance {check.tolerance:g} "
                 f"(relative L2) · {html.escape(check.note)}</p>")
    parts.append(_table(
        ["layer", "max abs error", "relative L2 error", "passed"],
        [[a.layer, a.max_abs_error, a.rel_l2_error, "yes" if a.passed else "NO"] for a in check.layers],
        numeric={1, 2}, row_class=lambda k: "" if check.layers[k].passed else "unconverged",
    ))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _join(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return _fmt(value)
