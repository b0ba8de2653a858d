"""Every figure the tool draws, as PNG bytes: per-layer maps, CID against depth, comparisons, localisation.

Figures are `matplotlib.figure.Figure` objects on their own Agg canvas: no pyplot, no global
backend switch, no state shared between figures or with the caller's matplotlib.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .encode import fmt, short

if TYPE_CHECKING:  # the writers pass these in; figures never import the analysis code at run time
    from ..compare import Comparison
    from ..layers import Layer
    from ..localize import Localization
    from ..results import LayerResult, Report

#: At most this many images are drawn per layer figure (all of them are in the JSON, CSV and maps).
MAX_FIGURE_IMAGES = 8
DPI = 90

ENTROPY_LABEL = "H (nats per value)"
RU_LABEL = "RU (nats per value)"
SENSITIVITY_LABEL = "sensitivity 1/σ² (max 1)"


def new_figure(width: float, height: float):
    """A Figure of `width` × `height` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def gray(image: np.ndarray | None) -> np.ndarray | None:
    """A (C, H, W) or (H, W) image as one (H, W) grayscale plane."""
    if image is None:
        return None
    image = np.asarray(image, dtype=np.float32)
    return image.mean(axis=0) if image.ndim == 3 else image


def finite_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """The range of the finite values over `maps` (a unit range around a constant; 0..1 for none)."""
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in maps]) if maps else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return low, high


# --------------------------------------------------------------------------------------------- per layer


@dataclass(frozen=True)
class _Grid:
    """The per-layer figure's geometry in inches, and the colour scales shared by its tiles."""

    heights: list[float]
    columns: list[float]  # left edge of each tile column
    width: float
    height: float
    scales: dict  # name -> (Normalize, colormap)
    tile: float = 2.6
    bar: float = 0.14
    gap: float = 0.12
    title: float = 0.52
    header: float = 0.45


def _grid(shown: list[LayerResult]) -> _Grid:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    tile, bar, gap, label, title, header, margin = 2.6, 0.14, 0.12, 0.95, 0.52, 0.45, 0.12
    heights = [tile * min(max(r.entropy.shape[0] / max(r.entropy.shape[1], 1), 0.25), 2.0) for r in shown]
    has_ru = any(r.ru is not None for r in shown)
    step = tile + gap + bar + label
    columns = [margin + i * step for i in range(3 if has_ru else 2)]
    scales = {
        "entropy": (Normalize(*finite_range([r.entropy for r in shown])), colormaps["magma"]),
        "sensitivity": (Normalize(0.0, 1.0), colormaps["viridis"]),
    }
    if has_ru:
        scales["ru"] = (Normalize(*finite_range([r.ru.map for r in shown if r.ru is not None])), colormaps["magma"])
    height = header + sum(h + title for h in heights) + margin
    return _Grid(heights, columns, columns[-1] + step, height, scales)


def _panels(r: LayerResult, image: np.ndarray | None, grid: _Grid) -> list[np.ndarray]:
    """The RGB tiles of one result: H over the grayscale image, sensitivity, and RU when measured."""
    norm, cmap = grid.scales["entropy"]
    overlay = cmap(norm(np.nan_to_num(r.entropy, nan=norm.vmin, posinf=norm.vmax, neginf=norm.vmin)))[..., :3]
    plane = gray(image)
    if plane is not None and plane.shape == r.entropy.shape:
        overlay = 0.35 * np.clip(plane, 0, 1)[..., None] + 0.65 * overlay
    norm, cmap = grid.scales["sensitivity"]
    panels = [overlay, cmap(norm(np.nan_to_num(r.sensitivity)))[..., :3]]
    if "ru" in grid.scales:
        norm, cmap = grid.scales["ru"]
        ru_map = r.ru.map if r.ru is not None else np.full_like(r.entropy, np.nan)
        panels.append(cmap(norm(np.nan_to_num(ru_map, nan=norm.vmin)))[..., :3])
    return panels


def _titles(r: LayerResult, with_ru: bool) -> tuple[list[str], dict]:
    status = f"CID {fmt(r.cid)}  ΔCID {fmt(r.delta_cid)}"
    if r.concentration is not None and math.isfinite(r.concentration):
        status += f"  conc {fmt(r.concentration)}"
    if r.converged:
        titles = [f"{short(r.image, 34)}\n{status}", f"sensitivity   D/τ {fmt(r.d_over_tau)}"]
        style = {"fontsize": 8, "color": "black"}
    else:
        titles = [f"NOT CONVERGED: {short(r.image, 22)}\n{status}", f"NOT CONVERGED   D/τ {fmt(r.d_over_tau)}"]
        style = {"fontsize": 8, "color": "red", "fontweight": "bold"}
    if with_ru and r.ru is not None:
        flag = "" if r.ru.converged else "NOT CONVERGED  "
        titles.append(
            f"{flag}RU {fmt(r.ru.mean)}  D/τ {fmt(r.ru.d_over_tau)}\ndecoder PSNR {fmt(r.ru.decoder_psnr, 1)} dB"
        )
    return titles, style


def _colorbars(figure, grid: _Grid, first: float, last: float) -> None:
    from matplotlib.cm import ScalarMappable

    labels = {"entropy": ENTROPY_LABEL, "sensitivity": SENSITIVITY_LABEL, "ru": RU_LABEL}
    for x0, (name, (norm, cmap)) in zip(grid.columns, grid.scales.items()):
        left = x0 + grid.tile + grid.gap
        cax = figure.add_axes(
            (left / grid.width, 1 - last / grid.height, grid.bar / grid.width, (last - first) / grid.height)
        )
        colorbar = figure.colorbar(ScalarMappable(norm, cmap), cax=cax)
        colorbar.set_label(labels[name], fontsize=9)
        colorbar.ax.tick_params(labelsize=8)


def plot_layer(layer: Layer, results: list[LayerResult], images: list[np.ndarray | None]) -> bytes:
    """Per image: H over the grayscale image (one shared scale for the layer), sensitivity beside it.

    `images[k]` is the canonical image of `results[k]` (None when unknown). Drawn on one full-figure
    axes whose data units are inches (tiles are placed images, titles are text, frames are
    rectangles): one Axes instead of one per panel keeps it fast.
    """
    from matplotlib.patches import Rectangle

    shown = results[:MAX_FIGURE_IMAGES]
    grid = _grid(shown)
    figure = new_figure(grid.width, grid.height)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_axis_off()
    axis.set_xlim(0, grid.width)
    axis.set_ylim(grid.height, 0)
    depth = f", depth {layer.depth:.2f}" if layer.depth is not None else ""
    heading = f"layer {layer.index}: {short(layer.name, 60)} ({layer.op_type}{depth})"
    axis.text(grid.width / 2, grid.header * 0.45, heading, ha="center", va="center", fontsize=11)
    top = grid.header
    for r, image, h in zip(shown, images, grid.heights):
        y0 = top + grid.title
        for x0, pixels in zip(grid.columns, _panels(r, image, grid)):
            axis.imshow(pixels, extent=(x0, x0 + grid.tile, y0 + h, y0), aspect="auto", interpolation="nearest")
        if not r.converged:
            for x0 in grid.columns:
                axis.add_patch(Rectangle((x0, y0), grid.tile, h, fill=False, edgecolor="red", linewidth=3))
        titles, style = _titles(r, "ru" in grid.scales)
        for x0, text in zip(grid.columns, titles):
            axis.text(x0 + grid.tile / 2, y0 - 0.05, text, ha="center", va="bottom", **style)
        top = y0 + h
    _colorbars(figure, grid, grid.header + grid.title, top)
    return png_bytes(figure)


# --------------------------------------------------------------------------------------------- CID versus depth


def _depth_panel(axis, report: Report, key: str, label: str, means: list[dict], baselines: list[float]) -> None:
    depth_of = {layer.name: layer.depth for layer in report.layers}
    # every converged image as a faint dot; the mean over images as the line
    dots = [(depth_of.get(r.layer), getattr(r, key)) for r in report.results if r.converged]
    dots = [(x, y) for x, y in dots if x is not None and y is not None and math.isfinite(y)]
    if dots:
        axis.scatter(
            [x for x, _ in dots], [y for _, y in dots], s=10, color="0.6", alpha=0.6, label="per image", zorder=2
        )
    points = sorted((m["depth"], m[key], m["layer"]) for m in means if m[key] is not None and m["depth"] is not None)
    if points:
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-", color="C0", label="mean over images", zorder=3)
        for x, y, name in points:
            right = x > 0.75  # labels near the right edge go to the left of their point
            axis.annotate(
                short(name, 18),
                (x, y),
                textcoords="offset points",
                xytext=(-3 if right else 3, 4),
                ha="right" if right else "left",
                fontsize=6,
            )
    if key == "cid" and baselines:
        axis.axhline(float(np.mean(baselines)), color="C3", linestyle="--", label="input (identity) baseline")
    if key in ("delta_cid", "concentration"):
        axis.axhline(0.0, color="0.3", linewidth=0.8)
    missing = [m["layer"] for m in means if m[key] is None]
    if key != "concentration" and missing:
        axis.text(
            0.02,
            0.02,
            f"{len(missing)} layer(s) without a converged result",
            transform=axis.transAxes,
            fontsize=7,
            color="red",
        )
    axis.set_xlabel("relative layer depth")
    axis.set_ylabel(label, fontsize=9)
    axis.set_xlim(-0.05, 1.05)
    axis.grid(alpha=0.3)
    if points or dots:
        axis.legend(fontsize=7, loc="best")


def plot_depth(report: Report) -> bytes:
    """Mean CID (with the input baseline), ΔCID and, when measured, concentration against depth."""
    means = report.layer_means()
    has_concentration = any(r.concentration is not None and math.isfinite(r.concentration) for r in report.results)
    panels = [("cid", "CID (nats per value)"), ("delta_cid", "ΔCID = CID − input (nats per value)")]
    if has_concentration:
        panels.append(("concentration", "concentration (nats)"))
    figure = new_figure(4.2 * len(panels), 3.8)
    baselines = [image.cid_input for image in report.images if math.isfinite(image.cid_input)]
    for k, (key, label) in enumerate(panels):
        _depth_panel(figure.add_subplot(1, len(panels), k + 1), report, key, label, means, baselines)
    figure.suptitle(f"CID versus depth, {len(report.images)} image(s), τ = {report.settings.tau:g}", fontsize=10)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.86, wspace=0.35)
    return png_bytes(figure)


# --------------------------------------------------------------------------------------------- comparison


def comparison_figure(comparison: Comparison):
    """CID and, when measured, concentration against relative depth, one curve per model; hollow
    markers where some image did not converge. A Figure, so that tests can read its axes."""
    panels = [("cid", "CID (nats per input value)"), ("concentration", "concentration (nats)")]
    if all(row.concentration is None for row in comparison.rows):
        panels = panels[:1]
    figure = new_figure(5.0 * len(panels), 4.0)
    for k, (key, label) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), k + 1)
        for i, name in enumerate(comparison.models):
            points = sorted(
                (r.depth, getattr(r, key), r.converged)
                for r in comparison.rows
                if r.model == name and getattr(r, key) is not None
            )
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
    tau = comparison.reports[0].settings.tau if comparison.reports else _default_tau()
    images = len(comparison.reports[0].images) if comparison.reports else 0
    figure.suptitle(f"{len(comparison.models)} model(s), {images} image(s), τ = {tau:g}", fontsize=10)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.88, wspace=0.28)
    return figure


def _default_tau() -> float:
    from ..perturb import SolverSettings

    return SolverSettings().tau


# --------------------------------------------------------------------------------------------- localisation


def localization_summary(result: Localization) -> bytes:
    """Left: localisation (fixed fraction, ± s.e.; ◆ best fraction) and pointing per map. Right: deletion curves."""
    figure = new_figure(11.5, 4.2)
    bars, curves = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    names = [m.name for m in result.methods]
    y = np.arange(len(names))
    loc = [m.loc_acc for m in result.methods]
    colours = ["#888888" if m.control else "#1f77b4" for m in result.methods]
    bars.barh(
        y - 0.2, loc, 0.4, xerr=[m.loc_acc_se for m in result.methods], color=colours, label="localisation (IoU ≥ 0.5)"
    )
    bars.barh(y + 0.2, [m.pointing_acc for m in result.methods], 0.4, color=colours, alpha=0.45, label="pointing game")
    bars.scatter(
        [m.loc_acc_best for m in result.methods],
        y - 0.2,
        marker="D",
        s=14,
        color="k",
        label="localisation at the best fraction",
        zorder=3,
    )
    bars.set_yticks(y, [n if len(n) < 28 else n[:12] + "…" + n[-12:] for n in names], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xlabel(f"share of {len(result.images)} images (grey: model-free controls)")
    bars.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    steps = np.linspace(0, 1, len(result.methods[0].deletion_curve)) if result.methods else []
    for m in result.methods:
        curves.plot(
            steps,
            m.deletion_curve,
            linestyle="--" if m.control else "-",
            linewidth=1.2,
            label=f"{m.name} (AUC {m.deletion_auc:.2f})",
        )
    curves.set_xlabel("fraction of pixels deleted (most relevant first)")
    curves.set_ylabel("class probability / clean")
    curves.set_title("deletion: lower = more faithful", fontsize=9)
    curves.legend(fontsize=7)
    figure.tight_layout()
    return png_bytes(figure)


def _box(axis, box, colour) -> None:
    from matplotlib.patches import Rectangle

    axis.add_patch(
        Rectangle(
            (box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour, linewidth=1.2
        )
    )


def localization_overlay(result: Localization, index: int) -> bytes:
    """One image: the image with its true box, then each map with its box (colour) and the truth (white)."""
    image = result.images[index]
    names = list(result.maps)
    figure = new_figure(1.6 * (len(names) + 1), 2.0)
    axes = figure.subplots(1, len(names) + 1)
    pixels = result.canonical_images[index]
    plane = pixels.mean(0) if pixels.shape[0] != 3 else None
    axes[0].imshow(pixels.transpose(1, 2, 0) if plane is None else plane, cmap="gray", vmin=0, vmax=1)
    _box(axes[0], image.truth, "lime")
    axes[0].set_title(f"{Path(image.image).stem[:14]}\nclass {image.target}", fontsize=7)
    for axis, name in zip(axes[1:], names):
        axis.imshow(result.maps[name][index], cmap="inferno")
        _box(axis, image.truth, "white")
        _box(axis, image.boxes[name], "cyan")
        hit = "hit" if image.ious[name] >= 0.5 else "miss"
        axis.set_title(f"{name[:14]}\nIoU {image.ious[name]:.2f} {hit}", fontsize=7)
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    return png_bytes(figure)
