"""Run a study: analyse every model on the same images, measure accuracy, answer each hypothesis."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..execute import ray_pool
from ..rowcache import RowCache
from .spec import ModelEntry, Study
from .stats import HypothesisResult, ModelMetrics, evaluate_hypothesis

if TYPE_CHECKING:
    from ..scale import RayPool


@dataclass(frozen=True)
class StudyResult:
    """Every hypothesis answered, with the models' accuracy and the settings that produced it."""

    study: Study = field(repr=False)
    images: tuple[str, ...]
    settings: dict  # SolverSettings as a dict (tau, steps, ...)
    models: tuple[ModelMetrics, ...] = field(repr=False)
    accuracy: dict  # model name -> accuracy on the study's images (empty without labels)
    results: tuple[HypothesisResult, ...]
    seed: int
    converged_only: bool = True
    seconds: float = 0.0
    analysis_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "kind": "study",
            "study": str(self.study.path),
            "title": self.study.title,
            "images": list(self.images),
            "settings": self.settings,
            "bootstrap_seed": self.seed,
            "converged_only": self.converged_only,
            "groups": {g: [m.name for m in ms] for g, ms in self.study.groups.items()},
            "accuracy": {k: round(v, 6) for k, v in self.accuracy.items()},
            "layers": {
                m.name: [{"layer": n, "depth": round(d, 6)} for n, d in zip(m.layers, m.depths)] for m in self.models
            },
            "hypotheses": [r.to_json() for r in self.results],
            "seconds": round(self.seconds, 3),
            "analysis_seconds": round(self.analysis_seconds, 3),
        }


def metrics_from_report(
    name: str, group: str, report, correct: np.ndarray | None = None, converged_only: bool = True
) -> ModelMetrics:
    """`ModelMetrics` from an `analysis.Report`: per layer and image; NaN where the row did not
    converge (unless `converged_only` is False: a smoke run with few steps)."""
    layers = [layer.name for layer in report.layers]
    images = [image.name for image in report.images]
    depth = {layer.name: float(layer.depth) for layer in report.layers}
    values = {k: np.full((len(layers), len(images)), np.nan) for k in ("cid", "delta_cid", "concentration", "ru")}
    converged = np.zeros((len(layers), len(images)), bool)
    for r in report.results:
        i, j = layers.index(r.layer), images.index(r.image)
        converged[i, j] = r.converged
        values["cid"][i, j], values["delta_cid"][i, j] = r.cid, r.delta_cid
        if r.concentration is not None:
            values["concentration"][i, j] = r.concentration
        if r.ru is not None:
            values["ru"][i, j] = r.ru.mean
    metrics = ModelMetrics(name, group, tuple(layers), tuple(depth[n] for n in layers), values, correct, converged)
    return metrics.only_converged() if converged_only else metrics


def answer(
    study: Study, models: Sequence[ModelMetrics], rng: np.random.Generator, n_boot: int | None = None
) -> tuple[HypothesisResult, ...]:
    """Every hypothesis of `study` on already computed per-model metrics (no analysis here)."""
    return tuple(evaluate_hypothesis(h, models, rng, n_boot or study.bootstrap) for h in study.hypotheses)


def run_study(
    study: Study,
    *,
    settings=None,
    max_images: int | None = None,
    device: str = "auto",
    rng: np.random.Generator | None = None,
    converged_only: bool = True,
    cache: RowCache | None = None,
    ray: str | RayPool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> StudyResult:
    """Analyse each model (its card, the entry's overrides, the study's τ/steps) on the study's
    images (`max_images` of them, evenly spread), measure accuracy with onnxruntime on all the
    study's images when labels are given (it is cheap; the metrics are not), and
    answer every hypothesis with a bootstrap over images and models (`rng`, default seeded by the
    study's `seed`). Rows that did not converge count as missing unless `converged_only` is False.
    With `cache` (the row cache), a re-run only solves the rows that changed, and several
    processes can share the work; `ray` ("auto" or an address) solves each model's rows on a Ray
    cluster, as `analyze` does."""
    from ..perturb import SolverSettings

    start = time.perf_counter()
    settings = _settings(study, settings or SolverSettings())
    images = spread(study.images, max_images)
    if len(images) < 2:
        raise InputError("a study needs at least 2 images to resample", option="max_images")
    labels = _labels(study)
    # every model's layers first, so that an unknown layer fails before any analysis
    plan = [layers_near(entry, study.layers, needed_depths(study, entry.group)) for entry in study.models]
    metrics, accuracy = [], {}
    with ray_pool(ray) as pool:  # with Ray, one set of workers for every model
        for entry, chosen in zip(study.models, plan):
            advance = (lambda stage, a, t, name=entry.name: progress(f"{name}: {stage}", a, t)) if progress else None
            cached = analyse_entry(
                study,
                entry,
                images,
                settings,
                chosen,
                labels,
                device=device,
                cache=cache,
                ray=pool,
                accuracy_images=list(study.images) if labels is not None else None,
                progress=advance,
            )
            if cached.correct is not None:
                accuracy[entry.name] = float(np.mean(cached.correct))
            metrics.append(cached.only_converged() if converged_only else cached)
    analysed = time.perf_counter() - start
    rng = rng if rng is not None else np.random.default_rng(study.seed)
    results = answer(study, metrics, rng)
    from dataclasses import asdict

    return StudyResult(
        study,
        tuple(p.name for p in images),
        asdict(settings),
        tuple(metrics),
        accuracy,
        results,
        study.seed,
        converged_only,
        time.perf_counter() - start,
        analysed,
    )


def analyse_entry(
    study: Study,
    entry: ModelEntry,
    images: Sequence[Path],
    settings,
    layers: Sequence[str],
    labels=None,
    *,
    accuracy_images: Sequence[Path] | None = None,
    device: str = "auto",
    cache: RowCache | None = None,
    ray: str | RayPool | None = None,
    progress=None,
) -> ModelMetrics:
    """One model's metrics at `layers` on `images` (every row kept, with its converged flag) and its
    correctness on `accuracy_images` (default `images`); rows in `cache` are reused."""
    from ..analysis import analyze
    from ..foreground import Foreground

    accuracy_images = list(accuracy_images or images)
    foreground = Foreground(boxes_csv=study.foreground) if study.foreground else None
    report = analyze(
        entry.path,
        list(images),
        list(layers),
        settings=settings,
        preprocessing_overrides=entry.preprocessing or None,
        foreground=foreground,
        device=device,
        input_name=entry.input_name,
        ru=study.ru,
        cache=cache,
        ray=ray,
        progress=progress,
    )
    correct = None
    if labels is not None:
        acc = _accuracy(entry, accuracy_images, labels)
        correct = acc.correct if accuracy_images != list(images) else _aligned(acc, [r.name for r in report.images])
    return metrics_from_report(entry.name, entry.group, report, correct, converged_only=False)


def spread(images: Sequence[Path], count: int | None) -> list[Path]:
    """`count` images evenly spaced over the sorted list (every class, when files are grouped by class)."""
    if not count or count >= len(images):
        return list(images)
    return [images[int(i)] for i in np.linspace(0, len(images) - 1, count).round()]


def needed_depths(study: Study, group: str | None = None) -> tuple[float, ...]:
    """The relative depths named by the hypotheses on `group`'s models (every hypothesis's when
    None), with the study's `depths`: only those layers are analysed. A group that no hypothesis
    names gets every depth the study names."""

    def on_group(h) -> bool:
        named = (h.left, h.right) if h.kind == "groups" else h.groups
        return group is None or not named or group in named

    found = [d for h in study.hypotheses if on_group(h) for d in (h.depth, h.depth2) if d is not None]
    if not found and group is not None:
        return needed_depths(study)
    return tuple(sorted(set(found) | set(study.depths or ())))


def layers_near(entry: ModelEntry, study_layers, depths: Sequence[float]) -> list[str]:
    """Of the candidate layers (the entry's, the study's, else the card's suggested layers, else every
    activation), the one nearest each depth, by the same relative depth `analyze` reports."""
    from ..layers import list_layers
    from ..load import load_model
    from ..passes import normalise
    from ..preprocess import read_card

    loaded = load_model(entry.path)
    every = list_layers(normalise(loaded.proto, entry.input_name))
    wanted = entry.layers or study_layers or read_card(entry.path, loaded.proto).get("suggested_layers")
    by_name = {layer.name: layer for layer in every}
    if wanted:
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            from ..errors import close_matches

            raise InputError(
                f"{entry.path.name}: no layer {unknown[0]!r}{close_matches(unknown[0], by_name)}", option="layers"
            )
        candidates = [by_name[name] for name in wanted]
    else:
        candidates = [layer for layer in every if layer.activation] or every
    picked = [min(candidates, key=lambda c: (abs(c.depth - d), c.depth)).name for d in depths]
    return list(dict.fromkeys(picked))


def _settings(study: Study, settings):
    changes = {
        k: v for k, v in (("tau", study.tau), ("steps", study.steps), ("samples", study.samples)) if v is not None
    }
    settings = replace(settings, **changes)
    settings.validate()
    return settings


def _labels(study: Study):
    if study.labels is None:
        return None
    from ..accuracy import read_labels

    return read_labels(study.labels)


def _accuracy(entry: ModelEntry, images: Sequence[Path], labels):
    from ..accuracy import accuracy

    return accuracy(
        entry.path, images, labels, input_name=entry.input_name, preprocessing_overrides=entry.preprocessing or None
    )


def _aligned(acc, names: Sequence[str]) -> np.ndarray:
    correct = dict(zip(acc.images, acc.correct))
    return np.array([bool(correct[n]) for n in names])
