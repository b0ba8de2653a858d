"""Each hypothesis answered with an effect, a bootstrap interval and a verdict.

The bootstrap resamples both sources of variation a claim about *models* has: the images (paired:
every model saw the same images, so one resample of image indices per replicate applies to every
model) and the models (each group's models resampled with replacement, within the group). A claim
holds when the interval lies wholly on its side of zero, is contradicted when it lies wholly on the
other side, and is inconclusive otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .spec import Hypothesis

LEVEL = 0.95


@dataclass(frozen=True)
class ModelMetrics:
    """One model's per-image metrics at its analysed layers (NaN where a row did not converge)."""

    name: str
    group: str
    layers: tuple[str, ...]
    depths: tuple[float, ...]  # relative depth of each layer, 0 input .. 1 deepest tensor
    values: dict = field(repr=False)  # metric -> float array (n_layers, n_images), nats per input value
    correct: np.ndarray | None = field(default=None, repr=False)  # bool per accuracy image, or None without labels
    converged: np.ndarray | None = field(default=None, repr=False)  # bool (n_layers, n_images); None: all

    def only_converged(self) -> ModelMetrics:
        """These metrics with NaN wherever the row did not converge."""
        if self.converged is None:
            return self
        values = {k: np.where(self.converged, v, np.nan) for k, v in self.values.items()}
        return ModelMetrics(self.name, self.group, self.layers, self.depths, values, self.correct, self.converged)

    def converged_at(self, depth: float) -> np.ndarray:
        if self.converged is None:
            return np.ones(len(self.values["cid"][0]), bool)
        return self.converged[self.layer_at(depth)]

    def layer_at(self, depth: float) -> int:
        """The analysed layer nearest `depth` (the shallower one on a tie)."""
        return int(min(range(len(self.depths)), key=lambda i: (abs(self.depths[i] - depth), self.depths[i])))

    def per_image(self, metric: str, depth: float) -> np.ndarray:
        return np.asarray(self.values[metric][self.layer_at(depth)], dtype=float)


@dataclass(frozen=True)
class HypothesisResult:
    """The answer to one claim. `effect` is A − B (group means), the mean within-model difference, or
    Spearman rho; in the metric's unit (nats per input value; concentration nats) except rho."""

    hypothesis: Hypothesis
    effect: float
    low: float  # 95 % percentile bootstrap interval
    high: float
    verdict: str  # holds / contradicted / inconclusive
    n_images: int
    models: dict  # group -> model names entering the test
    layers: dict  # model name -> the layer(s) used ("a" or "a - b")
    per_model: dict  # model name -> its value (x of a correlation) on all images
    accuracy: dict  # model name -> accuracy on the images (correlation kind; else empty)
    replicates: np.ndarray = field(repr=False)  # the B bootstrap effects (NaN dropped)
    n_boot: int = 0
    n_missing: int = 0  # (model, image) values left out: the row did not converge, or no foreground
    n_unconverged: int = 0  # (model, image) values whose rows did not converge (left out or, if kept, counted)

    def to_json(self) -> dict:
        h = self.hypothesis
        return {
            "hypothesis": h.text,
            "kind": h.kind,
            "metric": h.metric,
            "depth": h.depth,
            "depth2": h.depth2,
            "expected_sign": "+" if h.sign > 0 else "-",
            "effect": _round(self.effect),
            "ci_low": _round(self.low),
            "ci_high": _round(self.high),
            "level": LEVEL,
            "verdict": self.verdict,
            "n_images": self.n_images,
            "n_boot": self.n_boot,
            "n_missing": self.n_missing,
            "n_unconverged": self.n_unconverged,
            "models": self.models,
            "layers": self.layers,
            "per_model": {k: _round(v) for k, v in self.per_model.items()},
            "accuracy": {k: _round(v) for k, v in self.accuracy.items()},
        }


def verdict(low: float, high: float, sign: int) -> str:
    """holds: the interval excludes 0 on the claimed side; contradicted: on the other side."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "holds"
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "contradicted"
    return "inconclusive"


def evaluate_hypothesis(
    h: Hypothesis, models: Sequence[ModelMetrics], rng: np.random.Generator, n_boot: int = 2000
) -> HypothesisResult:
    """Effect on all data, and its bootstrap distribution over images and models."""
    chosen = _models_of(h, models)
    groups = {g: [m for m in chosen if m.group == g] for g in dict.fromkeys(m.group for m in chosen)}
    values = np.stack([_per_image(h, m) for m in chosen])  # (M, n)
    n = values.shape[1]
    full = np.ones((1, n))
    counts = _image_counts(rng, n_boot, n)  # (B, n): how often each image is drawn
    picks = {g: rng.integers(0, len(ms), size=(n_boot, len(ms))) for g, ms in groups.items()}
    index = {m.name: i for i, m in enumerate(chosen)}
    if h.kind == "correlation":
        correct = np.stack([np.asarray(m.correct, float) for m in chosen])
        # accuracy may be measured on more images than the metrics: those are resampled on their own
        same = correct.shape[1] == n
        acc_counts = counts if same else _image_counts(rng, n_boot, correct.shape[1])
        effect = _spearman_effect(h, groups, index, values, correct, full, np.ones((1, correct.shape[1])), None)
        boot = _spearman_effect(h, groups, index, values, correct, counts, acc_counts, picks)
    else:
        effect = _mean_effect(h, groups, index, values, full, None)
        boot = _mean_effect(h, groups, index, values, counts, picks)
    effect = float(effect[0])
    boot = boot[np.isfinite(boot)]
    low, high = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) if len(boot) else (np.nan, np.nan)
    means = _means(values, full)[0]
    return HypothesisResult(
        hypothesis=h,
        effect=effect,
        low=float(low),
        high=float(high),
        verdict=verdict(low, high, h.sign),
        n_images=n,
        models={g: [m.name for m in ms] for g, ms in groups.items()},
        layers={m.name: _layer_text(h, m) for m in chosen},
        per_model={m.name: float(means[index[m.name]]) for m in chosen},
        accuracy=({m.name: float(np.mean(m.correct)) for m in chosen} if h.kind == "correlation" else {}),
        replicates=boot,
        n_boot=n_boot,
        n_missing=int((~np.isfinite(values)).sum()),
        n_unconverged=int(sum((~_converged(h, m)).sum() for m in chosen)),
    )


def _models_of(h: Hypothesis, models: Sequence[ModelMetrics]) -> list[ModelMetrics]:
    wanted = [h.left, h.right] if h.kind == "groups" else list(h.groups)
    chosen = [m for m in models if not wanted or m.group in wanted]
    if h.kind == "groups":
        for g in wanted:
            if not any(m.group == g for m in chosen):
                raise ValueError(f"no analysed model in group {g!r}")
    if h.kind == "correlation" and any(m.correct is None for m in chosen):
        raise ValueError("a correlation with accuracy needs every model's per-image correctness")
    if not chosen:
        raise ValueError(f"hypothesis {h.text!r}: no models")
    return chosen


def _per_image(h: Hypothesis, m: ModelMetrics) -> np.ndarray:
    if h.kind == "depths":
        return m.per_image(h.metric, h.depth) - m.per_image(h.metric, h.depth2)
    return m.per_image(h.metric, h.depth)


def _converged(h: Hypothesis, m: ModelMetrics) -> np.ndarray:
    ok = m.converged_at(h.depth)
    return ok & m.converged_at(h.depth2) if h.kind == "depths" else ok


def _layer_text(h: Hypothesis, m: ModelMetrics) -> str:
    first = m.layers[m.layer_at(h.depth)]
    return f"{first} - {m.layers[m.layer_at(h.depth2)]}" if h.kind == "depths" else first


def _image_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    draws = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
    return counts


def _means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, M): each model's mean over the resampled images, ignoring NaN (non-converged) rows."""
    ok = np.isfinite(values)
    total = counts @ np.where(ok, values, 0.0).T
    weight = counts @ ok.T.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def _group_mean(means: np.ndarray, group_index: list[int], pick: np.ndarray | None) -> np.ndarray:
    cols = means[:, group_index]  # (B, g)
    if pick is not None:
        cols = np.take_along_axis(cols, pick, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate whose models are all NaN stays NaN
        return np.nanmean(cols, axis=1)


def _mean_effect(h, groups, index, values, counts, picks) -> np.ndarray:
    means = _means(values, counts)
    per_group = {
        g: _group_mean(means, [index[m.name] for m in ms], None if picks is None else picks[g])
        for g, ms in groups.items()
    }
    if h.kind == "groups":
        return per_group[h.left] - per_group[h.right]
    resampled = _resampled_columns(means, groups, index, picks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(resampled, axis=1)


def _resampled_columns(matrix: np.ndarray, groups, index, picks) -> np.ndarray:
    """The models' columns after resampling within each group: (B, M)."""
    columns = []
    for g, ms in groups.items():
        cols = matrix[:, [index[m.name] for m in ms]]
        columns.append(cols if picks is None else np.take_along_axis(cols, picks[g], axis=1))
    return np.concatenate(columns, axis=1)


def _spearman_effect(h, groups, index, values, correct, counts, acc_counts, picks) -> np.ndarray:
    x = _resampled_columns(_means(values, counts), groups, index, picks)
    y = _resampled_columns(acc_counts @ correct.T / acc_counts.sum(1, keepdims=True), groups, index, picks)
    return np.array([spearman(a, b) for a, b in zip(x, y)])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (average ranks for ties); NaN when either side is constant or has < 3 finite pairs."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for value in np.unique(a[np.diff(np.sort(a), prepend=np.nan) == 0]) if len(a) > 1 else []:
        ranks[a == value] = ranks[a == value].mean()
    return ranks


def _round(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)
