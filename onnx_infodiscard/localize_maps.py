"""The maps `localize` scores and how each image is scored: CID's sensitivity map per layer and σ
lattice, the Captum baselines, the model-free controls; the true boxes, the class explained, and
each image's box, IoU, pointing hit and deletion curve per map.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .analysis import analyze
from .attribution import Classifier, control_map, model_map
from .card import ModelCard
from .errors import InputError, close_matches
from .execute import ray_pool
from .images import CanonicalImage, box_mask, read_boxes
from .localization import Box, box_from_map, curve_area, deletion_curve, iou, pointing_hit
from .localize_scores import DELETION_STEPS, ImageScore
from .perturb import SolverSettings
from .rowcache import RowCache
from .session import Session

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AttributionMap:
    """One method's (or control's) maps of every image, and what made them."""

    values: np.ndarray  # (N, H, W)
    method: str  # cid, gradcam, gradient, ig, or a control
    layer: str | None = None
    grid: int | None = None  # CID's σ lattice (None: per pixel, or not CID)


def map_name(method: str, layer: str | None, several_layers: bool) -> str:
    """'cid', or 'cid@LAYER' when several layers are compared."""
    return f"{method}@{layer}" if several_layers and layer else method


def grid_name(name: str, grid: int | None, several: bool) -> str:
    """'cid' alone with one lattice; 'cid@pixel', 'cid@grid16' (after any '@LAYER') with several."""
    return f"{name}@{'pixel' if grid is None else f'grid{grid}'}" if several else name


def cid_maps(
    session: Session,
    layers: Sequence[str],
    grids: Sequence[int | None],
    settings: SolverSettings,
    *,
    cache: RowCache | None,
    ray: str | None,
    progress: Progress | None,
) -> tuple[dict[str, AttributionMap], list[str]]:
    """CID's sensitivity maps, one analysis per σ lattice; notes on the rows the cache held and on the
    images that missed the budget."""
    maps, notes = {}, []
    with ray_pool(ray) as pool:  # with Ray, one set of workers for every lattice
        reports = [
            analyze(
                session, layers=layers, settings=replace(settings, grid=grid), cache=cache, ray=pool, progress=progress
            )
            for grid in grids
        ]
    for grid, report in zip(grids, reports):
        if report.cached_rows:
            notes.append(
                f"{grid_name('cid', grid, True)}: {report.cached_rows} of {len(report.results)} rows from the row cache"
            )
        for layer in layers:
            results = [r for r in report.results if r.layer == layer]
            name = grid_name(map_name("cid", layer, len(layers) > 1), grid, len(grids) > 1)
            maps[name] = AttributionMap(np.stack([r.sensitivity for r in results]), "cid", layer, grid)
            missed = [r.image for r in results if not r.converged]
            if missed:
                notes.append(
                    f"{name}: {len(missed)} images missed the budget (|D/τ−1| > "
                    f"{settings.tolerance}): {', '.join(missed[:3])}; their maps are scored anyway"
                )
    return maps, notes


def baseline_maps(
    methods: Sequence[str],
    classifier: Classifier,
    x: torch.Tensor,
    targets: Sequence[int],
    layers: Sequence[str],
    progress: Progress,
) -> dict[str, AttributionMap]:
    """The Captum methods' maps (Grad-CAM at each layer, the others on the input)."""
    maps = {}
    for method in methods:
        for layer in layers if method == "gradcam" else [None]:
            progress(f"{method} maps", 0, 1)
            name = map_name(method, layer, len(layers) > 1)
            maps[name] = AttributionMap(model_map(method, classifier, x, targets, layer), method, layer)
            progress(f"{method} maps", 1, 1)
    return maps


def control_maps(controls: Sequence[str], images: Sequence[CanonicalImage]) -> dict[str, AttributionMap]:
    """The model-free controls' maps."""
    return {c: AttributionMap(np.stack([control_map(c, image.pixels) for image in images]), c) for c in controls}


def predict(classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The model's clean outputs, in batches of 64, on the CPU."""
    with torch.no_grad():
        return torch.cat([classifier(x[i : i + 64]) for i in range(0, len(x), 64)]).cpu()


def score_images(
    maps: dict[str, AttributionMap],
    images: Sequence[CanonicalImage],
    truths: Sequence[Box],
    targets: Sequence[int],
    correct: Sequence[bool],
    score: Callable[[np.ndarray, int], np.ndarray],
    progress: Progress,
) -> tuple[list[ImageScore], dict[str, list[np.ndarray]]]:
    """Each image's box, IoU, pointing hit and deletion area per map; the deletion curves per map."""
    curves: dict[str, list[np.ndarray]] = {name: [] for name in maps}
    scored = []
    for i, image in enumerate(images):
        fill = image.pixels.reshape(image.pixels.shape[0], -1).mean(1)  # deleted pixels take the image's mean colour
        ious, hits, aucs, found = {}, {}, {}, {}
        for name, attribution in maps.items():
            stack = attribution.values
            found[name] = box_from_map(stack[i])
            ious[name] = iou(found[name], truths[i])
            hits[name] = bool(pointing_hit(stack[i], truths[i]))
            curve, _ = deletion_curve(lambda b, t=targets[i]: score(b, t), image.pixels, stack[i], DELETION_STEPS, fill)
            curves[name].append(curve)
            aucs[name] = curve_area(curve)
        scored.append(ImageScore(image.name, truths[i], int(targets[i]), found, ious, hits, aucs, bool(correct[i])))
        progress("localisation and deletion (images)", 1, len(images))
    return scored, curves


def true_boxes(images: Sequence[CanonicalImage], path: Path) -> list[Box]:
    """Each image's box from the CSV (file pixels), as a box at the model's resolution."""
    boxes = read_boxes(path)
    missing = [image.name for image in images if image.name not in boxes]
    if missing:
        raise InputError(
            f"{path}: no box for {len(missing)} of the images ({', '.join(missing[:3])}); "
            "add a row file,x0,y0,x1,y1 for each image or leave those images out"
        )
    truths = []
    for image in images:
        rows, columns = np.nonzero(box_mask(boxes[image.name], image))
        truths.append((int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1))
    return truths


def class_targets(
    path: Path, images: Sequence[CanonicalImage], card: ModelCard, scores: torch.Tensor
) -> tuple[list[int], str]:
    """The class to explain per image: the CSV's `label` column (index or class name), else the prediction."""
    with open(path, newline="", encoding="utf-8-sig") as handle:  # read_boxes read it already, BOM and all
        rows = {row["file"].strip(): row for row in csv.DictReader(handle) if row.get("file")}
    classes = [str(c) for c in card.get("classes") or []]
    count = scores.shape[1]
    if not all("label" in rows.get(image.name, {}) for image in images):
        return scores.argmax(1).tolist(), "the model's predicted class (the boxes CSV has no label column)"
    targets = []
    for image in images:
        label = rows[image.name]["label"].strip()
        if label in classes:
            targets.append(classes.index(label))
        elif label.lstrip("-").isdigit() and 0 <= int(label) < count:
            targets.append(int(label))
        else:
            raise InputError(
                f"{path}: label '{label}' of {image.name} is neither a class index 0..{count - 1} "
                f"nor a class name of the model card{close_matches(label, classes)}"
            )
    return targets, "the label column of the boxes CSV"


def class_score(classifier: Classifier, device: torch.device, clean: torch.Tensor):
    """Probability of a class for a batch of canonical images: softmax, unless the output already is one."""
    probabilities = bool((clean >= 0).all() and torch.allclose(clean.sum(1), torch.ones(len(clean)), atol=1e-3))

    def score(batch: np.ndarray, target: int) -> np.ndarray:
        with torch.no_grad():
            out = classifier(torch.from_numpy(batch).to(device)).float()
            out = out if probabilities else out.softmax(1)
        return out[:, target].cpu().numpy()

    return score
