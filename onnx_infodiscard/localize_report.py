"""Write a `Localization` to a folder: JSON, CSV tables, maps, a summary plot and per-image overlays.

Written atomically like the analysis report (`report.write_folder`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .localize import Localization
from .report import json_text, new_figure, png_bytes, safe_name, write_folder

MARKER = "localization.json"
METHOD_COLUMNS = ("name", "method", "control", "layer", "loc_acc", "loc_acc_se", "mean_iou", "pointing_acc",
                  "deletion_auc", "best_fraction", "loc_acc_best")
#: Overlays drawn by default (every image is in the JSON, CSV and maps).
DEFAULT_OVERLAYS = 24


def write_localization(result: Localization, out_dir: Path | str, overlays: int = DEFAULT_OVERLAYS) -> Path:
    """localization.json, methods.csv, images.csv, maps.npz, localization.png, overlays/*.png."""

    def write(folder: Path) -> None:
        (folder / MARKER).write_text(json_text(result.to_json()), encoding="utf-8")
        _write_methods(result, folder / "methods.csv")
        _write_images(result, folder / "images.csv")
        np.savez_compressed(folder / "maps.npz", **{safe_name(k): v.astype(np.float32) for k, v in result.maps.items()})
        (folder / "localization.png").write_bytes(summary_png(result))
        if overlays:
            (folder / "overlays").mkdir()
            for i in range(min(overlays, len(result.images))):
                name = f"{i:03d}_{safe_name(Path(result.images[i].image).stem)}.png"
                (folder / "overlays" / name).write_bytes(overlay_png(result, i))

    return write_folder(out_dir, write, MARKER)


def _write_methods(result: Localization, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(METHOD_COLUMNS)
        for score in result.methods:
            writer.writerow([_cell(getattr(score, column)) for column in METHOD_COLUMNS])


def _write_images(result: Localization, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", "target", "method", "iou", "localized", "pointing", "deletion_auc",
                         "x0", "y0", "x1", "y1", "true_x0", "true_y0", "true_x1", "true_y1"))
        for image in result.images:
            for name, box in image.boxes.items():
                writer.writerow([image.image, image.target, name, _cell(image.ious[name]),
                                 int(image.ious[name] >= 0.5), int(image.pointing[name]),
                                 _cell(image.deletion_auc[name]), *box, *image.truth])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.6g}"
    return str(value)


def summary_png(result: Localization) -> bytes:
    """Left: localisation (fixed fraction, ± s.e.; ◆ best fraction) and pointing per map. Right: deletion curves."""
    figure = new_figure(11.5, 4.2)
    bars, curves = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    names = [m.name for m in result.methods]
    y = np.arange(len(names))
    loc = [m.loc_acc for m in result.methods]
    colours = ["#888888" if m.control else "#1f77b4" for m in result.methods]
    bars.barh(y - 0.2, loc, 0.4, xerr=[m.loc_acc_se for m in result.methods], color=colours, label="localisation (IoU ≥ 0.5)")
    bars.barh(y + 0.2, [m.pointing_acc for m in result.methods], 0.4, color=colours, alpha=0.45, label="pointing game")
    bars.scatter([m.loc_acc_best for m in result.methods], y - 0.2, marker="D", s=14, color="k",
                 label="localisation at the best fraction", zorder=3)
    bars.set_yticks(y, [n if len(n) < 28 else n[:12] + "…" + n[-12:] for n in names], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xlabel(f"share of {len(result.images)} images (grey: model-free controls)")
    bars.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    steps = np.linspace(0, 1, len(result.methods[0].deletion_curve)) if result.methods else []
    for m in result.methods:
        curves.plot(steps, m.deletion_curve, linestyle="--" if m.control else "-", linewidth=1.2,
                    label=f"{m.name} (AUC {m.deletion_auc:.2f})")
    curves.set_xlabel("fraction of pixels deleted (most relevant first)")
    curves.set_ylabel("class probability / clean")
    curves.set_title("deletion: lower = more faithful", fontsize=9)
    curves.legend(fontsize=7)
    figure.tight_layout()
    return png_bytes(figure)


def overlay_png(result: Localization, index: int) -> bytes:
    """One image: the image with its true box, then each map with its box (colour) and the truth (white)."""
    from matplotlib.patches import Rectangle

    image = result.images[index]
    names = list(result.maps)
    figure = new_figure(1.6 * (len(names) + 1), 2.0)
    axes = figure.subplots(1, len(names) + 1)
    pixels = result.canonical_images[index]
    gray = pixels.mean(0) if pixels.shape[0] != 3 else None
    shown = pixels.transpose(1, 2, 0) if gray is None else gray

    def rectangle(axis, box, colour):
        axis.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                 fill=False, edgecolor=colour, linewidth=1.2))

    axes[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
    rectangle(axes[0], image.truth, "lime")
    axes[0].set_title(f"{Path(image.image).stem[:14]}\nclass {image.target}", fontsize=7)
    for axis, name in zip(axes[1:], names):
        axis.imshow(result.maps[name][index], cmap="inferno")
        rectangle(axis, image.truth, "white")
        rectangle(axis, image.boxes[name], "cyan")
        hit = "hit" if image.ious[name] >= 0.5 else "miss"
        axis.set_title(f"{name[:14]}\nIoU {image.ious[name]:.2f} {hit}", fontsize=7)
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    return png_bytes(figure)
