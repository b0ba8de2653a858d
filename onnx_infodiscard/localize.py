"""`localize`: do CID's maps find the object? Weakly-supervised localisation, the pointing game and
deletion curves for CID's sensitivity map and the Captum baselines, beside model-free controls, on
images with known boxes (issue #7).

This module is the orchestration; the maps and per-image scoring are in `localize_maps.py`, the
per-method scores, cross-validated choices, verdict and result types in `localize_scores.py`, and the
per-map rules in `localization.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .attribution import CONTROLS, MODEL_METHODS, Classifier
from .card import ModelCard
from .embedded import benchmark_model
from .errors import InputError, close_matches
from .load import load_model
from .localization import DEFAULT_FOLDS, IOU_HIT
from .localize_maps import (
    baseline_maps,
    cid_maps,
    class_score,
    class_targets,
    control_maps,
    predict,
    score_images,
    true_boxes,
)
from .localize_scores import (
    FRACTIONS,
    ImageScore,
    Localization,
    MethodScore,
    grid_choice,
    protocol,
    score_methods,
    verdict,
)
from .perturb import SolverSettings
from .rowcache import RowCache
from .session import open_session

__all__ = ["DEFAULT_GRIDS", "FRACTIONS", "IOU_HIT", "ImageScore", "Localization", "MethodScore", "localize"]

#: CID's σ lattices when neither `grids` nor `settings.grid` says: None = one σ per pixel.
DEFAULT_GRIDS: tuple[int | None, ...] = (None,)


def localize(
    model: str | Path | None = None,
    images: Sequence[str | Path] | None = None,
    boxes: str | Path | None = None,
    layers: Sequence[str] | None = None,
    methods: Sequence[str] = MODEL_METHODS,
    controls: Sequence[str] = CONTROLS,
    *,
    settings: SolverSettings = SolverSettings(),
    preprocessing_overrides: dict | None = None,
    device: str = "auto",
    input_name: str | None = None,
    input_shape: Sequence[int] | None = None,
    cache: RowCache | None = None,
    ray: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    grids: Sequence[int | None] | None = None,
    folds: int = DEFAULT_FOLDS,
) -> Localization:
    """Score each method's map (and each control's) against the true boxes.

    With no model, the shipped localisation benchmark (`models/cluttered_digits`); with no images
    or boxes, the card's. Layers: as given, else the deepest of the card's suggested layers, else
    the deepest `auto` layer; CID and Grad-CAM are computed at each. The class scored is the boxes
    CSV's `label` column when it has one (index or class name), else the model's prediction.
    CID runs once per σ lattice in `grids` (None = per pixel; default `settings.grid` if set, else
    DEFAULT_GRIDS); with several, its grid is chosen with the threshold by `folds`-fold
    cross-validation over images (`grid_choice`), never on the images it is scored on.
    """
    start = time.perf_counter()
    methods, controls = _checked(methods, MODEL_METHODS, "method"), _checked(controls, CONTROLS, "control")
    grids = _grids(grids, settings, folds)
    report_progress = progress or (lambda stage, advance, total: None)
    model = Path(model) if model is not None else benchmark_model()
    loaded = load_model(model)
    card = ModelCard.for_model(model, loaded.proto)
    boxes = Path(boxes) if boxes is not None else _card_boxes(model, card)
    inputs = {"preprocessing_overrides": preprocessing_overrides, "input_name": input_name, "input_shape": input_shape}
    session = open_session(
        model, images, _layer_specs(card, layers), loaded=loaded, outputs=True, device=device, **inputs
    )
    truths = true_boxes(session.images, boxes)
    layer_names = [layer.name for layer in session.layers] if layers else [session.layers[-1].name]
    classifier = Classifier(session.preprocess, session.module, layer_names).to(session.device)
    x = session.pixels()
    clean = predict(classifier, x)
    targets, target_rule = class_targets(boxes, session.images, card, clean)
    maps, notes = {}, []
    if "cid" in methods:
        maps, notes = cid_maps(session, layer_names, grids, settings, cache=cache, ray=ray, progress=progress)
    maps |= baseline_maps([m for m in methods if m != "cid"], classifier, x, targets, layer_names, report_progress)
    maps |= control_maps(controls, session.images)
    correct = (clean.argmax(1) == torch.as_tensor(targets)).tolist()
    score = class_score(classifier, session.device, clean)
    image_scores, curves = score_images(maps, session.images, truths, targets, correct, score, report_progress)
    scores, sweeps = score_methods(maps, image_scores, curves, truths, folds, settings.seed)
    choice = grid_choice(scores, sweeps, folds, settings.seed) if len(grids) > 1 else {}
    text, beaten = verdict(scores, choice)
    from . import __version__

    return Localization(
        tool_version=__version__,
        model_path=str(loaded.path),
        model_sha256=loaded.sha256,
        layers=tuple(layer_names),
        settings=settings,
        preprocessing=session.preprocessing,
        device=str(session.device),
        crosscheck=session.crosscheck,
        methods=scores,
        images=tuple(image_scores),
        protocol=protocol(settings, folds, grids, target_rule),
        verdict=text,
        controls_beaten=beaten,
        maps={name: attribution.values for name, attribution in maps.items()},
        canonical_images=tuple(image.pixels for image in session.images),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        grid_choice=choice,
    )


def _checked(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    names = [n.strip().lower() for n in names if n.strip()]
    for name in names:
        if name not in known:
            raise InputError(f"unknown {what} '{name}'{close_matches(name, known, 1)} (choose from {', '.join(known)})")
    return list(dict.fromkeys(names))


def _card_boxes(model: Path, card: ModelCard) -> Path:
    if not card.get("foreground_boxes"):
        raise InputError(
            f"no --boxes given and the card of {model.name} names none; give a CSV with columns file,x0,y0,x1,y1"
        )
    return card.image_folder(model, "foreground_boxes")


def _layer_specs(card: ModelCard, layers: Sequence[str] | None) -> list[str]:
    """The layers to open: as given, else the deepest suggested layer, else `auto` (of which the deepest is used)."""
    if layers:
        return list(layers)
    suggested = card.get("suggested_layers")
    return [suggested[-1]] if suggested else ["auto"]


def _grids(grids: Sequence[int | None] | None, settings: SolverSettings, folds: int) -> tuple[int | None, ...]:
    """The σ lattices CID runs on: as given, else settings.grid when set, else DEFAULT_GRIDS (among
    which `folds`-fold cross-validation chooses)."""
    if folds < 2:
        raise InputError(f"{folds} folds: cross-validation needs at least 2 (default {DEFAULT_FOLDS})", option="folds")
    if not grids:
        return (settings.grid,) if settings.grid is not None else DEFAULT_GRIDS
    for grid in grids:
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid <= 0):
            raise InputError(
                f"{grid!r} is not a grid size; give positive integers (e.g. 16) or None for one σ per pixel",
                option="grids",
            )
    return tuple(dict.fromkeys(grids))
