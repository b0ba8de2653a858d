"""What `localize` returns and how its scores are computed: per-method scores over the images,
CID's σ lattice chosen by cross-validation, the verdict (does any model-free control do as well?),
and the protocol text the report carries. The per-map rules live in `localization.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .attribution import CONTROLS, IG_STEPS
from .crosscheck import CrossCheck
from .localization import (
    DEFAULT_FRACTION,
    IOU_HIT,
    Box,
    best_option,
    cross_validated_accuracy,
    cross_validated_choice,
    deletion_score,
    fraction_preference,
    sweep_hits,
)
from .output.encode import LOCALIZATION_SCHEMA_VERSION as SCHEMA_VERSION
from .perturb import SolverSettings
from .preprocess import Preprocessing

#: The threshold fractions among which cross-validation chooses (and the optimistic best-on-all).
FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 1.0, 0.05))
DELETION_STEPS = 20


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


def method_score(
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


def score_methods(
    maps: dict,
    images: Sequence[ImageScore],
    curves: dict[str, list[np.ndarray]],
    truths: Sequence[Box],
    folds: int,
    seed: int,
) -> tuple[tuple[MethodScore, ...], dict[str, np.ndarray]]:
    """Every map's scores (`maps`: name -> AttributionMap) and its hits at each of FRACTIONS per image."""
    sweeps = {name: sweep_hits(m.values, truths, FRACTIONS) for name, m in maps.items()}
    scores = tuple(
        method_score(name, (m.method, m.layer), m.grid, sweeps[name], images, curves[name], folds, seed)
        for name, m in maps.items()
    )
    return scores, sweeps


def grid_choice(scores: Sequence[MethodScore], sweeps: dict[str, np.ndarray], folds: int, seed: int) -> dict:
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


def verdict(scores: Sequence[MethodScore], grid_choice: dict | None = None) -> tuple[str, bool]:
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


def protocol(settings: SolverSettings, folds: int, grids: Sequence[int | None], target_rule: str) -> dict:
    """The rules the report states: how boxes, hits, thresholds, folds, deletion and maps were made."""
    return {
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
