"""The analysis report folder: report.json, metrics.csv, maps.npz, one figure per layer, report.html."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..results import RELIABILITY_FLAG
from . import figures
from .encode import SCHEMA_VERSION, join, json_safe, json_text, safe_name, write_csv
from .folders import write_folder
from .html import cell, escape, head, kv, png_uri, table

if TYPE_CHECKING:
    from ..results import Report

MARKER = "report.json"
CSV_COLUMNS = tuple(
    "image layer layer_index depth cid cid_total delta_cid concentration saturated_fraction converged "
    "d_over_tau d_over_tau_se eval_samples steps extra_steps reliability seconds".split()
)
RU_COLUMNS = ("ru", "ru_converged", "ru_d_over_tau", "decoder_psnr")


def write_report(report: Report, out_dir: Path | str, *, new_subfolder: bool = False) -> Path:
    """Write `report` into `out_dir` atomically and return the final folder (absolute).

    Files: report.json, metrics.csv, maps.npz, one layer_{index}_{name}.png per layer,
    cid_vs_depth.png, report.html (self-contained) and the manifest of them (`folders.MANIFEST`).
    An existing `out_dir` is replaced only when everything in it is an earlier output of this tool
    (see `folders.write_folder`); `new_subfolder` writes into a new subfolder of a folder in use instead.
    """
    return write_folder(out_dir, lambda folder: write_contents(report, folder), MARKER, new_subfolder=new_subfolder)


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


def write_contents(report: Report, folder: Path) -> None:
    """Every file of the report, into `folder` (the caller makes it atomic)."""
    (folder / MARKER).write_text(json_text(report.to_json()), encoding="utf-8")
    write_metrics(report, folder / "metrics.csv")
    write_maps(report, folder / "maps.npz")
    where = {id(r): i for r, i in zip(report.results, image_index(report))}
    plots = []  # (file name, layer, png)
    for layer in report.layers:
        results = [r for r in report.results if r.layer == layer.name]
        if not results:
            continue
        images = [_canonical(report, where.get(id(r))) for r in results]
        png = figures.plot_layer(layer, results, images)
        name = f"layer_{layer.index}_{safe_name(layer.name)}.png"
        (folder / name).write_bytes(png)
        plots.append((name, layer, png))
    depth_png = figures.plot_depth(report)
    (folder / "cid_vs_depth.png").write_bytes(depth_png)
    (folder / "report.html").write_text(report_html(report, depth_png, plots), encoding="utf-8")


def _canonical(report: Report, index: int | None) -> np.ndarray | None:
    return report.canonical_images[index] if index is not None and index < len(report.canonical_images) else None


def write_metrics(report: Report, path: Path) -> None:
    """metrics.csv: one row per (image, layer) result, the RU columns empty without RU."""
    rows = []
    for r in report.results:
        ru = (r.ru.mean, r.ru.converged, r.ru.d_over_tau, r.ru.decoder_psnr) if r.ru else (None,) * len(RU_COLUMNS)
        rows.append([getattr(r, column) for column in CSV_COLUMNS] + list(ru))
    write_csv(path, CSV_COLUMNS + RU_COLUMNS, rows)


def image_index(report: Report) -> list[int | None]:
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
    return [
        f"{r.image}#{i}" if i is not None and counts.get(r.image, 0) > 1 else r.image
        for r, i in zip(report.results, image_index(report))
    ]


def write_maps(report: Report, path: Path) -> None:
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


# --------------------------------------------------------------------------------------------- report.html


def report_html(report: Report, depth_png: bytes, plots: list[tuple[str, object, bytes]]) -> str:
    """The self-contained page: verdict, per-layer table, figures, per-result table, model and settings."""
    model = escape(Path(report.model_path).name)
    parts = [
        *head(f"infodiscard report: {Path(report.model_path).name}"),
        f"<h1>Information discarding: {model}</h1>",
        f'<p class="muted">onnx-infodiscard {escape(report.tool_version)} · {len(report.images)} image(s) × '
        f"{len(report.layers)} layer(s) · {report.seconds:.1f} s on {escape(report.device)} · "
        'data: <a href="report.json">report.json</a>, <a href="metrics.csv">metrics.csv</a>, '
        '<a href="maps.npz">maps.npz</a></p>',
        *_verdict(report),
        *_layer_summary(report),
        "<h2>CID versus depth</h2>",
        f'<img alt="CID versus depth" src="{png_uri(depth_png)}">',
        *_layer_maps(report, plots),
        *_result_tables(report),
        *_model_and_parameters(report),
        *_crosscheck(report),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _verdict(report: Report) -> list[str]:
    unconverged = [r for r in report.results if not r.converged]
    parts = []
    if unconverged:
        items = "".join(
            f"<li>{escape(r.image)} · {escape(r.layer)}: D/τ = {cell(r.d_over_tau)} (± {cell(r.d_over_tau_se)})</li>"
            for r in unconverged
        )
        parts.append(
            f'<div class="alert"><b>{len(unconverged)} of {len(report.results)} result(s) did NOT CONVERGE</b> '
            f"(|D/τ − 1| &gt; {report.settings.tolerance:g} or too noisy). They are not results: they are "
            f"left out of the per-layer means and marked in red below. Try more --steps.<ul>{items}</ul></div>"
        )
    else:
        parts.append(
            f'<p class="ok">All {len(report.results)} results converged '
            f"(|D/τ − 1| ≤ {report.settings.tolerance:g}).</p>"
        )
    if report.audit:
        parts.append(
            "<h2>Audit (--fail-if)</h2><ul>"
            + "".join(
                f'<li class="{"unconverged" if o.failed else ""}">{escape(o.describe())}</li>' for o in report.audit
            )
            + "</ul>"
        )
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    return parts


def _per_layer_total(report: Report) -> dict[str, int]:
    return {layer.name: sum(1 for r in report.results if r.layer == layer.name) for layer in report.layers}


def _layer_summary(report: Report) -> list[str]:
    total = _per_layer_total(report)
    means = report.layer_means()
    has_ru = any(r.ru is not None for r in report.results)
    rows = [
        [
            m["index"],
            m["layer"],
            m["op_type"],
            m["depth"],
            f"{m['n_images']} / {total.get(m['layer'], 0)}",
            m["cid"],
            m["delta_cid"],
            m["concentration"],
            m["d_over_tau"],
        ]
        + ([m["ru"], m["decoder_psnr"]] if has_ru else [])
        for m in means
    ]
    header = ["#", "layer", "op", "depth", "converged", "CID", "ΔCID", "concentration", "D/τ"] + (
        ["RU", "decoder PSNR (dB, held out)"] if has_ru else []
    )
    return [
        "<h2>Per-layer summary</h2>",
        '<p class="muted">Means over images with a converged result. CID: mean pixel-wise entropy '
        "H<sub>uv</sub> = log σ<sub>uv</sub> + ½ log(2πe) of the largest noise the layer tolerates at "
        "distortion τ (nats per input value; high = information discarded). ΔCID: CID minus the "
        "input's own (identity layer) CID. Concentration: mean background H − mean foreground H "
        "(positive = the layer keeps the object and discards the background).</p>",
        table(
            header,
            rows,
            numeric={0, 3, 5, 6, 7, 8, 9, 10},
            row_class=lambda k: "unconverged" if means[k]["n_images"] < total.get(means[k]["layer"], 0) else "",
        ),
    ]


def _layer_maps(report: Report, plots: list[tuple[str, object, bytes]]) -> list[str]:
    total = _per_layer_total(report)
    parts = [
        "<h2>Maps per layer</h2>",
        '<p class="muted">Left: H<sub>uv</sub> (nats per value) over the grayscale image, one colour '
        "scale per layer. Right: sensitivity s<sub>uv</sub> = 1/σ<sub>uv</sub>², scaled to a maximum "
        "of 1 (use it for boxes and thresholds). With RU, third: the reconstruction uncertainty "
        "½ log(2πe·E[(g(f(x'))−x)²]) per pixel (nats per value), beside its decoder's held-out PSNR. "
        "Unconverged results are framed in red.</p>",
    ]
    for _, layer, png in plots:
        count = total.get(layer.name, 0)
        parts.append(
            f"<h3>layer {layer.index}: <code>{escape(layer.name)}</code> "
            f"({escape(str(layer.op_type))}, depth {cell(layer.depth)})</h3>"
        )
        if count > figures.MAX_FIGURE_IMAGES:
            parts.append(
                f'<p class="muted">Showing the first {figures.MAX_FIGURE_IMAGES} of {count} images; every '
                "map is in maps.npz and every number in metrics.csv.</p>"
            )
        parts.append(f'<img alt="maps of layer {escape(layer.name, quote=True)}" src="{png_uri(png)}">')
    return parts


def _result_tables(report: Report) -> list[str]:
    rows = [
        [
            r.image,
            r.layer,
            r.cid,
            r.delta_cid,
            r.concentration,
            r.saturated_fraction,
            "yes" if r.converged else "NOT CONVERGED",
            r.d_over_tau,
            r.d_over_tau_se,
            r.steps + r.extra_steps,
            r.reliability if not r.reliability < RELIABILITY_FLAG else f"{r.reliability:.3f} LOW",
        ]
        for r in report.results
    ]
    return [
        "<h2>Results per image and layer</h2>",
        f'<p class="muted">reliability: split-half correlation of the map, Spearman–Brown corrected (1 = no Monte '
        f"Carlo noise in its pixel structure); below {RELIABILITY_FLAG} it is marked LOW.</p>",
        table(
            [
                "image",
                "layer",
                "CID",
                "ΔCID",
                "concentration",
                "saturated",
                "converged",
                "D/τ",
                "± SE",
                "steps",
                "reliability",
            ],
            rows,
            numeric={2, 3, 4, 5, 7, 8, 9, 10},
            row_class=lambda k: "" if report.results[k].converged else "unconverged",
        ),
        "<h2>Images</h2>",
        table(
            ["image", "input CID (nats per value)", "foreground"],
            [[i.name, i.cid_input, "yes" if i.has_foreground else "no"] for i in report.images],
            numeric={1},
        ),
    ]


def _model_and_parameters(report: Report) -> list[str]:
    parts = [
        "<h2>Model</h2>",
        kv(
            [
                ("path", report.model_path),
                ("sha256", report.model_sha256),
                ("input", report.input_name),
                ("input shape", "×".join(str(d) for d in report.input_shape)),
                ("device", report.device),
                ("batch safe", "yes" if report.batch_safe else "no (one sample at a time)"),
            ]
        ),
    ]
    if report.passes:
        parts.append(
            "<p>Normalisation passes:</p><ul>" + "".join(f"<li>{escape(p)}</li>" for p in report.passes) + "</ul>"
        )
    parameters = {**asdict(report.settings), "foreground": report.foreground}
    parts += [
        "<h2>Preprocessing</h2>",
        kv([(k, join(v)) for k, v in report.preprocessing.to_json().items()]),
        "<h2>Parameters</h2>",
        kv([(k, join(v)) for k, v in parameters.items()]),
    ]
    return parts


def _crosscheck(report: Report) -> list[str]:
    check = report.crosscheck
    verdict = '<span class="ok">passed</span>' if check.passed else '<span class="bad">FAILED</span>'
    return [
        "<h2>Cross-check against onnxruntime</h2>",
        f"<p>{verdict} · provider {escape(check.provider)} · tolerance {check.tolerance:g} "
        f"(relative L2) · {escape(check.note)}</p>",
        table(
            ["layer", "max abs error", "relative L2 error", "passed"],
            [[a.layer, a.max_abs_error, a.rel_l2_error, "yes" if a.passed else "NO"] for a in check.layers],
            numeric={1, 2},
            row_class=lambda k: "" if check.layers[k].passed else "unconverged",
        ),
    ]
