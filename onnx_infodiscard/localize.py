"""`localize`: do CID's maps find the object? Weakly-supervised localisation, the pointing game and
deletion curves for CID's sensitivity map and the Captum baselines, beside model-free controls, on
images with known boxes (issue #7). The scoring rules live in `localization.py`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .analysis import analyze
from .attribution import CONTROLS, IG_STEPS, MODEL_METHODS, Classifier, control_map, model_map
from .card import ModelCard
from .crosscheck import CrossCheck
from .embedded import BENCHMARK_MODEL
from .errors import InputError, close_matches
from .images import CanonicalImage, box_mask, read_boxes
from .load import load_model
from .localization import (
    DEFAULT_FOLDS,
    DEFAULT_FRACTION,
    IOU_HIT,
    Box,
    best_option,
    box_from_map,
    cross_validated_accuracy,
    cross_validated_choice,
    curve_area,
    deletion_curve,
    deletion_score,
    fraction_preference,
    iou,
    pointing_hit,
    sweep_hits,
)
from .output.encode import LOCALIZATION_SCHEMA_VERSION as SCHEMA_VERSION
from .perturb import SolverSettings
from .preprocess import Preprocessing
from .rowcache import RowCache
from .session import open_session

#: The threshold fractions among which cross-validation chooses (and the optimistic best-on-all).
FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 1.0, 0.05))
DELETION_STEPS = 20
#: CID's σ lattices when neither `grids` nor `settings.grid` says: None = one σ per pixel.
DEFAULT_GRIDS: tuple[int | None, ...] = (None,)


@dataclass(frozen=True)
class MethodScore:
    """How well one map finds the object, averaged over the images."""

    name: str  # key in the report: 'cid', 'gradcam', or 'cid@LAYER' when several layers are compared
    method: str  # cid, gradcam, gradient, ig, or a control: brightness, contrast, edges, center
    control: bool
    layer: str | None
    loc_acc: float  # share of images with IoU >= 0.5 at the fixed fraction
    loc_acc_se: float  # binomial standard error
    mean_iou: float
    pointing_acc: float
    deletion_auc: float  # mean area under the target's probability, correctly classified images; lower = more faithful
    best_fraction: float
    loc_acc_best: float  # at best_fraction, picked on these same images (optimistic)
    deletion_curve: tuple[float, ...]  # mean probability after each deletion step (same images)
    loc_acc_cv: float = float("nan")  # fraction chosen on k−1 folds, scored on the held-out one
    loc_acc_cv_se: float = float("nan")  # binomial standard error over the images
    cv_fractions: tuple[float, ...] = ()  # the fraction chosen for each fold
    grid: int | None = None  # CID's σ lattice (None: per pixel); None for every other map
    deletion_images: int = 0  # correctly classified images in deletion_auc
    deletion_auc_normalised: float = float("nan")  # old rule, kept one release: area / clean probability, all images
    deletion_curve_normalised: tuple[float, ...] = ()

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "name"}


@dataclass(frozen=True)
class ImageScore:
    """One image: its true box at model resolution, the class scored, and each map's box and hits."""

    image: str
    truth: Box
    target: int
    boxes: dict[str, Box]
    ious: dict[str, float]
    pointing: dict[str, bool]
    deletion_auc: dict[str, float]  # area under the target's probability (not normalised)
    correct: bool = True  # the model's clean prediction is the target: the image enters deletion_auc


@dataclass(frozen=True)
class Localization:
    """A localisation benchmark of one model on one image set."""

    tool_version: str
    model_path: str
    model_sha256: str
    layers: tuple[str, ...]
    settings: SolverSettings
    preprocessing: Preprocessing
    device: str
    crosscheck: CrossCheck
    methods: tuple[MethodScore, ...]
    images: tuple[ImageScore, ...]
    protocol: dict
    verdict: str
    controls_beaten: bool  # the best method beats every control on localisation and pointing
    maps: dict[str, np.ndarray] = field(repr=False)  # name -> (N, H, W)
    canonical_images: tuple[np.ndarray, ...] = field(repr=False)
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    grid_choice: dict = field(default_factory=dict)  # CID's grid and fraction chosen jointly by CV, per layer

    def method(self, name: str) -> MethodScore:
        return next(m for m in self.methods if m.name == name)

    def summary_json(self) -> dict:
        """What `--json` prints: the per-method scores, the image count and the protocol."""
        return {
            "methods": {m.name: m.to_json() for m in self.methods},
            "grid_choice": self.grid_choice,
            "n_images": len(self.images),
            "protocol": self.protocol,
            "verdict": self.verdict,
            "controls_beaten": self.controls_beaten,
        }

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "model": {"path": self.model_path, "sha256": self.model_sha256},
            "layers": list(self.layers),
            "device": self.device,
            "preprocessing": self.preprocessing.to_json(),
            "crosscheck": {
                "provider": self.crosscheck.provider,
                "passed": self.crosscheck.passed,
                "note": self.crosscheck.note,
            },
            **self.summary_json(),
            "images": [vars(image) for image in self.images],
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


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
    grids = _grids(grids, settings)
    if folds < 2:
        raise InputError(f"{folds} folds: cross-validation needs at least 2 (default {DEFAULT_FOLDS})", option="folds")
    report_progress = progress or (lambda stage, advance, total: None)
    model = Path(model) if model is not None else _benchmark_model()
    loaded = load_model(model)
    card = ModelCard.for_model(model, loaded.proto)
    boxes = Path(boxes) if boxes is not None else _card_boxes(model, card)
    session = open_session(
        model,
        images,
        _layer_specs(card, layers),
        outputs=True,
        preprocessing_overrides=preprocessing_overrides,
        input_name=input_name,
        input_shape=input_shape,
        device=device,
        loaded=loaded,
    )
    canonical, torch_device = session.images, session.device
    c = session.shape[0]
    truths = _true_boxes(canonical, boxes)
    layer_names = [layer.name for layer in session.layers] if layers else [session.layers[-1].name]
    classifier = Classifier(session.preprocess, session.module, layer_names).to(torch_device)
    x = session.pixels()
    with torch.no_grad():
        clean = torch.cat([classifier(x[i : i + 64]) for i in range(0, len(x), 64)]).cpu()
    targets, target_rule = _targets(boxes, canonical, card, clean)
    several = len(layer_names) > 1
    name_of = lambda method, layer: f"{method}@{layer}" if several and layer else method  # noqa: E731

    maps: dict[str, np.ndarray] = {}
    kinds: dict[str, tuple[str, str | None]] = {}
    notes: list[str] = []
    grid_of: dict[str, int | None] = {}
    for grid in grids if "cid" in methods else ():
        grid_settings = replace(settings, grid=grid)
        report = analyze(session, layers=layer_names, settings=grid_settings, cache=cache, ray=ray, progress=progress)
        for layer in layer_names:
            results = [r for r in report.results if r.layer == layer]
            name = _grid_name(name_of("cid", layer), grid, len(grids) > 1)
            maps[name], kinds[name], grid_of[name] = np.stack([r.sensitivity for r in results]), ("cid", layer), grid
            missed = [r.image for r in results if not r.converged]
            if missed:
                notes.append(
                    f"{name}: {len(missed)} images missed the budget (|D/τ−1| > "
                    f"{settings.tolerance}): {', '.join(missed[:3])}; their maps are scored anyway"
                )
    for method in (m for m in methods if m != "cid"):
        for layer in layer_names if method == "gradcam" else [None]:
            report_progress(f"{method} maps", 0, 1)
            maps[name_of(method, layer)] = model_map(method, classifier, x, targets, layer)
            kinds[name_of(method, layer)] = (method, layer)
            report_progress(f"{method} maps", 1, 1)
    for control in controls:
        maps[control] = np.stack([control_map(control, image.pixels) for image in canonical])
        kinds[control] = (control, None)

    score = _class_score(classifier, torch_device, clean)
    correct = (clean.argmax(1) == torch.as_tensor(targets)).tolist()
    per_image = {name: [] for name in maps}
    image_scores = []
    for i, image in enumerate(canonical):
        fill = image.pixels.reshape(c, -1).mean(1)  # deleted pixels take the image's mean colour
        ious, hits, aucs, found = {}, {}, {}, {}
        for name, stack in maps.items():
            found[name] = box_from_map(stack[i])
            ious[name] = iou(found[name], truths[i])
            hits[name] = bool(pointing_hit(stack[i], truths[i]))
            curve, _ = deletion_curve(lambda b, t=targets[i]: score(b, t), image.pixels, stack[i], DELETION_STEPS, fill)
            per_image[name].append(curve)
            aucs[name] = curve_area(curve)
        image_scores.append(
            ImageScore(image.name, truths[i], int(targets[i]), found, ious, hits, aucs, bool(correct[i]))
        )
        report_progress("localisation and deletion (images)", 1, len(canonical))

    sweeps = {name: sweep_hits(maps[name], truths, FRACTIONS) for name in maps}
    scores = tuple(
        _method_score(
            name, kinds[name], grid_of.get(name), sweeps[name], image_scores, per_image[name], folds, settings.seed
        )
        for name in maps
    )
    grid_choice = _grid_choice(scores, sweeps, folds, settings.seed) if len(grids) > 1 else {}
    verdict, beaten = _verdict(scores, grid_choice)
    protocol = {
        "box_rule": f"threshold the map at a fraction of its maximum (fixed in advance: {DEFAULT_FRACTION}); "
        "bounding box of the largest 4-connected region at or above it",
        "fraction": DEFAULT_FRACTION,
        "fraction_sweep": list(FRACTIONS),
        "thresholds": f"loc_acc: the fixed fraction {DEFAULT_FRACTION}. loc_acc_cv: for every map alike, the fraction "
        f"chosen by {folds}-fold cross-validation over images: the fraction of fraction_sweep with the "
        f"most hits on {folds - 1} of the {folds} folds (ties: nearest {DEFAULT_FRACTION}), scored on "
        "the held-out fold, each fold in turn (cv_fractions); ± binomial s.e. over the images. "
        "loc_acc_best: the best fraction on all images (chosen on the test images: optimistic)",
        "folds": folds,
        "fold_rule": f"a permutation of the images (in input order) by numpy default_rng(seed={settings.seed}), "
        "split into equal parts",
        "grids": ["pixel" if g is None else g for g in grids],
        "grid_rule": (
            "CID's σ lattice and threshold fraction chosen jointly on the same k−1 folds, scored on the "
            "held-out fold (grid_choice; ties: nearest fraction, then the grid listed first); never on the "
            "test images"
            if len(grids) > 1
            else "one lattice, fixed in advance (settings.grid, else DEFAULT_GRIDS); not tuned"
        ),
        "hit": f"IoU >= {IOU_HIT} with the true box (model resolution)",
        "pointing": "the map's maximum lies inside the true box",
        "deletion": f"most relevant pixels first, {DELETION_STEPS} equal steps, deleted pixels set to the image's "
        "mean colour; score = softmax probability of the target class; deletion_auc = area under the "
        "probability itself (in [0, 1], not normalised), averaged over the correctly classified images "
        "(deletion_images)",
        "deletion_normalised": "deprecated, one release: deletion_auc_normalised = area / the image's clean "
        "probability, averaged over all images (barely recognised images dominate it)",
        "target": target_rule,
        "cid_map": "sensitivity 1/σ² at the layer (METHOD §5), τ and steps as in settings",
        "gradcam": "Captum LayerGradCam at the layer, ReLU, bilinear upsampling",
        "gradient": "Captum Saliency, |gradient| max over channels",
        "ig": f"Captum IntegratedGradients, black baseline, {IG_STEPS} steps, |attribution| summed over channels",
        "controls": {
            "brightness": "pixel intensity",
            "contrast": "local std in a 5×5 window",
            "edges": "Sobel gradient magnitude",
            "center": "Gaussian at the image centre, σ = side/4",
        },
        "tau": settings.tau,
        "steps": settings.steps,
        "samples": settings.samples,
        "grid": grids[0] if len(grids) == 1 else "chosen by cross-validation (grid_choice)",
        "seed": settings.seed,
    }
    from . import __version__

    return Localization(
        tool_version=__version__,
        model_path=str(loaded.path),
        model_sha256=loaded.sha256,
        layers=tuple(layer_names),
        settings=settings,
        preprocessing=session.preprocessing,
        device=str(torch_device),
        crosscheck=session.crosscheck,
        methods=scores,
        images=tuple(image_scores),
        protocol=protocol,
        verdict=verdict,
        controls_beaten=beaten,
        maps=maps,
        canonical_images=tuple(image.pixels for image in canonical),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        grid_choice=grid_choice,
    )


def _checked(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    names = [n.strip().lower() for n in names if n.strip()]
    for name in names:
        if name not in known:
            raise InputError(f"unknown {what} '{name}'{close_matches(name, known, 1)} (choose from {', '.join(known)})")
    return list(dict.fromkeys(names))


def _benchmark_model() -> Path:
    if not BENCHMARK_MODEL.is_file():
        raise InputError(
            f"the shipped localisation benchmark {BENCHMARK_MODEL} is missing; install from a source "
            "checkout (pip install -e .) or give a MODEL with --images and --boxes"
        )
    return BENCHMARK_MODEL


def _card_boxes(model: Path, card: ModelCard) -> Path:
    if not card.get("foreground_boxes"):
        raise InputError(
            f"no --boxes given and the card of {model.name} names none; give a CSV with columns file,x0,y0,x1,y1"
        )
    return card.image_folder(model, "foreground_boxes")


def _true_boxes(images: Sequence[CanonicalImage], path: Path) -> list[Box]:
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


def _layer_specs(card: ModelCard, layers: Sequence[str] | None) -> list[str]:
    """The layers to open: as given, else the deepest suggested layer, else `auto` (of which the deepest is used)."""
    if layers:
        return list(layers)
    suggested = card.get("suggested_layers")
    return [suggested[-1]] if suggested else ["auto"]


def _targets(
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


def _class_score(classifier: Classifier, device: torch.device, clean: torch.Tensor):
    """Probability of a class for a batch of canonical images: softmax, unless the output already is one."""
    probabilities = bool((clean >= 0).all() and torch.allclose(clean.sum(1), torch.ones(len(clean)), atol=1e-3))

    def score(batch: np.ndarray, target: int) -> np.ndarray:
        with torch.no_grad():
            out = classifier(torch.from_numpy(batch).to(device)).float()
            out = out if probabilities else out.softmax(1)
        return out[:, target].cpu().numpy()

    return score


def _grids(grids: Sequence[int | None] | None, settings: SolverSettings) -> tuple[int | None, ...]:
    """The σ lattices CID runs on: as given, else settings.grid when set, else DEFAULT_GRIDS."""
    if not grids:
        return (settings.grid,) if settings.grid is not None else DEFAULT_GRIDS
    for grid in grids:
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid <= 0):
            raise InputError(
                f"{grid!r} is not a grid size; give positive integers (e.g. 16) or None for one σ per pixel",
                option="grids",
            )
    return tuple(dict.fromkeys(grids))


def _grid_name(name: str, grid: int | None, several: bool) -> str:
    """'cid' alone with one lattice; 'cid@pixel', 'cid@grid16' (after any '@LAYER') with several."""
    return f"{name}@{'pixel' if grid is None else f'grid{grid}'}" if several else name


def _method_score(
    name, kind, grid, sweep: np.ndarray, images: Sequence[ImageScore], curves, folds: int, seed: int
) -> MethodScore:
    """One map's scores; `sweep` (images, FRACTIONS) says which images it localises at each fraction."""
    hits = np.array([image.ious[name] >= IOU_HIT for image in images])
    preference = fraction_preference(FRACTIONS)
    best = best_option(sweep, preference)  # on all the images: optimistic
    cv = cross_validated_accuracy(sweep, folds, seed, preference)
    deletion = deletion_score(np.stack(curves), [image.correct for image in images])
    n = len(images)
    return MethodScore(
        name=name,
        method=kind[0],
        control=kind[0] in CONTROLS,
        layer=kind[1],
        loc_acc=float(hits.mean()),
        loc_acc_se=float(np.sqrt(hits.mean() * (1 - hits.mean()) / n)),
        mean_iou=float(np.mean([image.ious[name] for image in images])),
        pointing_acc=float(np.mean([image.pointing[name] for image in images])),
        deletion_auc=deletion.auc,
        best_fraction=FRACTIONS[best],
        loc_acc_best=float(sweep[:, best].mean()),
        deletion_curve=deletion.curve,
        loc_acc_cv=cv.accuracy,
        loc_acc_cv_se=cv.se,
        cv_fractions=tuple(FRACTIONS[j] for j in cv.chosen),
        grid=grid,
        deletion_images=deletion.n_images,
        deletion_auc_normalised=deletion.auc_normalised,
        deletion_curve_normalised=deletion.curve_normalised,
    )


def _grid_choice(scores: Sequence[MethodScore], sweeps: dict[str, np.ndarray], folds: int, seed: int) -> dict:
    """Per layer, CID's lattice and fraction chosen together on k−1 folds and scored on the held-out one."""
    choice = {}
    for layer in dict.fromkeys(s.layer for s in scores if s.method == "cid"):
        group = [s for s in scores if s.method == "cid" and s.layer == layer]
        cv, chosen = cross_validated_choice([sweeps[s.name] for s in group], FRACTIONS, folds, seed)
        choice[group[0].name.rsplit("@", 1)[0]] = {
            "candidates": [s.name for s in group],
            "loc_acc_cv": cv.accuracy,
            "loc_acc_cv_se": cv.se,
            "chosen": [{"map": group[g].name, "grid": group[g].grid, "fraction": f} for g, f in chosen],
        }
    return choice


def _verdict(scores: Sequence[MethodScore], grid_choice: dict | None = None) -> tuple[str, bool]:
    """Which method localises best under cross-validated thresholds (CID's grid chosen the same way),
    by how much, and whether any model-free control does as well."""
    grid_choice = grid_choice or {}
    chosen_in = {name for entry in grid_choice.values() for name in entry["candidates"]}
    ranked = [(s.name, s.loc_acc_cv, s.loc_acc_cv_se) for s in scores if not s.control and s.name not in chosen_in]
    ranked += [(f"{base} (grid chosen by CV)", e["loc_acc_cv"], e["loc_acc_cv_se"]) for base, e in grid_choice.items()]
    ranked.sort(key=lambda r: -np.nan_to_num(r[1], nan=-1.0))
    methods = [s for s in scores if not s.control]
    controls = [s for s in scores if s.control]
    if not methods:
        return "only model-free controls were run: nothing to compare", False
    name, acc, se = ranked[0]
    text = f"best localisation (threshold chosen by cross-validation): {name} {acc:.3f} ± {se:.3f}"
    if len(ranked) > 1:
        text += f", {acc - ranked[1][1]:+.3f} over {ranked[1][0]} ({ranked[1][1]:.3f} ± {ranked[1][2]:.3f})"
    faithful = min(methods, key=lambda s: np.nan_to_num(s.deletion_auc, nan=np.inf))
    text += f"; most faithful by deletion: {faithful.name} (AUC {faithful.deletion_auc:.3f})"
    if not controls:
        return text + "; no model-free control was run, so the benchmark itself is untested", False
    top_loc = max(controls, key=lambda s: np.nan_to_num(s.loc_acc_cv, nan=-1.0))
    top_point = max(controls, key=lambda s: s.pointing_acc)
    best_point = max(methods, key=lambda s: s.pointing_acc)
    beaten = bool(top_loc.loc_acc_cv < acc and top_point.pointing_acc < best_point.pointing_acc)
    if beaten:
        text += (
            f"; every model-free control scores below it (best control: {top_loc.name} "
            f"{top_loc.loc_acc_cv:.3f} localisation, {top_point.name} {top_point.pointing_acc:.3f} pointing)"
        )
    else:
        text += (
            f"; WARNING: a model-free control does as well ({top_loc.name} {top_loc.loc_acc_cv:.3f} "
            f"localisation, {top_point.name} {top_point.pointing_acc:.3f} pointing): this data set cannot "
            "support a claim about which method localises best"
        )
    return text, beaten
