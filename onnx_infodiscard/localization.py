"""Evaluating attribution maps (issues #7, #16): boxes from maps, IoU, the pointing game, deletion
curves, and choices (threshold fraction, σ grid) made by cross-validation over images.

Small pure functions over (H, W) maps, so every method (CID's sensitivity map, Grad-CAM, gradients,
model-free controls) is scored by the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # x0, y0 inclusive; x1, y1 exclusive; x = column

#: The documented rule's threshold, fixed in advance: a fraction of the map's maximum.
DEFAULT_FRACTION = 0.5
#: A box localises the object at IoU >= 0.5 with the true box.
IOU_HIT = 0.5
#: Folds of the cross-validation over images.
DEFAULT_FOLDS = 5


def box_from_map(attribution: np.ndarray, fraction: float = DEFAULT_FRACTION) -> Box:
    """Bounding box of the largest connected region where the map is at least `fraction` of its max."""
    attribution = np.nan_to_num(np.asarray(attribution, dtype=np.float64), nan=-np.inf)
    top = attribution.max()
    mask = attribution >= fraction * top if top > 0 else attribution >= top
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    rows, columns = np.nonzero(mask)
    return int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localized(attribution: np.ndarray, truth: Box, fraction: float = DEFAULT_FRACTION) -> bool:
    """Weakly-supervised localisation counts a hit at IoU >= 0.5."""
    return iou(box_from_map(attribution, fraction), truth) >= IOU_HIT


def pointing_hit(attribution: np.ndarray, truth: Box) -> bool:
    """The pointing game: the map's maximum falls inside the object's box."""
    row, column = np.unravel_index(int(np.nanargmax(attribution)), attribution.shape)
    return truth[0] <= column < truth[2] and truth[1] <= row < truth[3]


def deletion_curve(
    score: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    attribution: np.ndarray,
    steps: int = 20,
    baseline: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, float]:
    """Delete the most relevant pixels first, in `steps` equal parts; the class score after each.

    `score` maps a batch (K, C, H, W) to K scores; it is called once, on the clean image and every
    deletion step. Deleted pixels take `baseline` (a number, or one value per channel). Returns the
    curve as a (steps + 1, 2) array of (fraction deleted, score) and the area under it normalised by
    the clean score: low = the map found what the model uses (Warnecke et al. 2020).
    """
    order = np.argsort(-np.nan_to_num(attribution, nan=-np.inf), axis=None, kind="stable")
    image = np.asarray(image, dtype=np.float32)
    fill = np.broadcast_to(np.asarray(baseline, dtype=np.float32).reshape(-1, 1), (image.shape[0], 1))
    bounds = np.linspace(0, order.size, steps + 1).round().astype(int)
    batch = np.repeat(image.reshape(1, image.shape[0], -1), steps + 1, axis=0)
    for k, end in enumerate(bounds[1:], start=1):
        batch[k][:, order[:end]] = fill
    scores = np.asarray(score(batch.reshape(steps + 1, *image.shape)), dtype=np.float64)
    curve = np.stack([bounds / order.size, scores], axis=1)
    return curve, curve_area(curve) / scores[0] if scores[0] else float("nan")


def curve_area(curve: np.ndarray) -> float:
    """Trapezoid area under a (fraction deleted, score) curve: the mean score over the deletion."""
    return float(((curve[1:, 1] + curve[:-1, 1]) / 2 * np.diff(curve[:, 0])).sum())


@dataclass(frozen=True)
class DeletionScore:
    """Deletion curves of one map over an image set, summarised two ways (both unitless, lower = more faithful)."""

    auc: float  # mean area under the target's probability itself, over the correctly classified images
    curve: tuple[float, ...]  # mean probability after each step, over the same images
    n_images: int  # correctly classified images that entered `auc`
    auc_normalised: float  # old rule (one release): mean area / each image's clean probability, over all images
    curve_normalised: tuple[float, ...]


def deletion_score(curves: np.ndarray, correct: np.ndarray) -> DeletionScore:
    """Average (N, steps + 1, 2) deletion curves of raw probabilities.

    The area of the probability itself lies in [0, 1] for every image, so an image the model
    barely recognises cannot dominate the mean as it does when each area is divided by its clean
    probability (0.01 rising to 0.5 scores 50). Only correctly classified images enter: deleting
    evidence for a class the model does not see says nothing about the map.
    """
    curves = np.asarray(curves, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    areas = np.array([curve_area(c) for c in curves])
    clean = curves[:, 0, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(clean > 0, areas / clean, np.nan)
        scaled = np.where(clean[:, None] > 0, curves[:, :, 1] / clean[:, None], np.nan)
    kept = curves[correct, :, 1]
    return DeletionScore(
        auc=float(areas[correct].mean()) if correct.any() else float("nan"),
        curve=tuple(float(v) for v in (kept.mean(0) if len(kept) else np.full(curves.shape[1], np.nan))),
        n_images=int(correct.sum()),
        auc_normalised=float(np.nanmean(normalised)) if np.isfinite(normalised).any() else float("nan"),
        curve_normalised=tuple(float(v) for v in np.nanmean(scaled, axis=0)),
    )


def sweep_hits(maps: np.ndarray, truths: Sequence[Box], fractions: Sequence[float]) -> np.ndarray:
    """(N, F) bool: whether image i's map, thresholded at fractions[j], localises its object."""
    return np.array([[localized(m, t, f) for f in fractions] for m, t in zip(maps, truths)], dtype=bool)


@dataclass(frozen=True)
class CrossValidated:
    """An option (a threshold fraction, or a grid and a fraction) chosen on k−1 folds of images and
    scored on the held-out fold, for each fold in turn. No image ever helps choose its own option."""

    accuracy: float  # share of all images hit under the option chosen without them
    se: float  # binomial standard error over the images (the choice's own variance is not in it)
    chosen: tuple[int, ...]  # the option chosen for each fold (a column of `hits`)
    folds: tuple[tuple[int, ...], ...]  # the images held out in each fold


def image_folds(n: int, k: int = DEFAULT_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """k folds (at most n) of a seeded permutation of 0..n−1: sizes differ by at most one."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, max(1, min(k, n)))]


def best_option(hits: np.ndarray, preference: Sequence[float] | None = None) -> int:
    """The column of (images, options) `hits` with the most hits; ties go to the lowest `preference`
    (default: the first column)."""
    counts = np.asarray(hits, dtype=bool).sum(0)
    rank = np.arange(counts.size, dtype=np.float64) if preference is None else np.asarray(preference, dtype=np.float64)
    tied = np.flatnonzero(counts == counts.max())
    return int(tied[np.argmin(rank[tied])])


def cross_validated_accuracy(
    hits: np.ndarray, k: int = DEFAULT_FOLDS, seed: int = 0, preference: Sequence[float] | None = None
) -> CrossValidated:
    """k-fold cross-validated localisation accuracy of choosing an option (column of `hits`, (N, options)
    bool) by its hits on the other folds. With fewer than two images nothing can be held out: NaN."""
    hits = np.asarray(hits, dtype=bool)
    n = hits.shape[0]
    if n < 2:
        return CrossValidated(float("nan"), float("nan"), (), ())
    folds = image_folds(n, k, seed)
    held_out = np.zeros(n, dtype=bool)
    chosen = []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        chosen.append(best_option(hits[train], preference))
        held_out[test] = hits[test, chosen[-1]]
    p = float(held_out.mean())
    return CrossValidated(
        p, float(np.sqrt(p * (1 - p) / n)), tuple(chosen), tuple(tuple(int(i) for i in fold) for fold in folds)
    )


def fraction_preference(fractions: Sequence[float], groups: int = 1) -> np.ndarray:
    """Tie-break for options laid out as `groups` blocks of `fractions`: nearest the fixed fraction
    first, then the earlier block (e.g. the first grid listed)."""
    distance = np.abs(np.asarray(fractions, dtype=np.float64) - DEFAULT_FRACTION)
    return np.tile(distance, groups) + np.repeat(np.arange(groups), len(fractions)) * 1e-6


def cross_validated_choice(
    sweeps: Sequence[np.ndarray], fractions: Sequence[float], k: int = DEFAULT_FOLDS, seed: int = 0
) -> tuple[CrossValidated, list[tuple[int, float]]]:
    """Choose a map (e.g. CID's σ lattice) and its fraction together on k−1 folds, score on the held-out
    fold. `sweeps`: one (N, len(fractions)) hits array per candidate map. Returns the result and, per
    fold, (candidate index, fraction) chosen."""
    cv = cross_validated_accuracy(np.concatenate(sweeps, axis=1), k, seed, fraction_preference(fractions, len(sweeps)))
    return cv, [(j // len(fractions), fractions[j % len(fractions)]) for j in cv.chosen]
