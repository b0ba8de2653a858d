"""Evaluating attribution maps (issue #7): boxes from maps, IoU, the pointing game, deletion curves.

Small pure functions over (H, W) maps, so every method (CID's sensitivity map, Grad-CAM, gradients,
model-free controls) is scored by the same rules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # x0, y0 inclusive; x1, y1 exclusive; x = column

#: The documented rule's threshold, fixed in advance: a fraction of the map's maximum.
DEFAULT_FRACTION = 0.5


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
    return iou(box_from_map(attribution, fraction), truth) >= 0.5


def pointing_hit(attribution: np.ndarray, truth: Box) -> bool:
    """The pointing game: the map's maximum falls inside the object's box."""
    row, column = np.unravel_index(int(np.nanargmax(attribution)), attribution.shape)
    return truth[0] <= column < truth[2] and truth[1] <= row < truth[3]


def deletion_curve(
    score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, attribution: np.ndarray, steps: int = 20,
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
    area = float(((curve[1:, 1] + curve[:-1, 1]) / 2 * np.diff(curve[:, 0])).sum())  # trapezoids
    return curve, area / scores[0] if scores[0] else float("nan")
