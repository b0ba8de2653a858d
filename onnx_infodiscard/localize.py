"""`localize`: do CID's maps find the object? Weakly-supervised localisation, the pointing game and
deletion curves for CID's sensitivity map and the Captum baselines, beside model-free controls, on
images with known boxes (issue #7). The scoring rules live in `localization.py`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .analysis import analyze, model_input_shape
from .attribution import CONTROLS, IG_STEPS, MODEL_METHODS, Classifier, control_map, model_map
from .check import prepare
from .crosscheck import CrossCheck
from .embedded import BENCHMARK_MODEL, card_images
from .errors import InputError, close_matches
from .images import CanonicalImage, box_mask, find_images, load_images, read_boxes
from .layers import list_layers, select_layers
from .load import LoadedModel, load_model
from .passes import normalise
from .localization import DEFAULT_FRACTION, Box, box_from_map, deletion_curve, iou, pointing_hit
from .perturb import SolverSettings, resolve_device
from .preprocess import Preprocess, Preprocessing, canonical_shape, read_card, resolve_preprocessing

SCHEMA_VERSION = 1
#: The threshold sweep reported beside the fixed rule (chosen on the same images: optimistic).
FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 1.0, 0.05))
DELETION_STEPS = 20
IOU_HIT = 0.5


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
    deletion_auc: float  # mean normalised area under the class-score deletion curve; lower = more faithful
    best_fraction: float
    loc_acc_best: float  # at best_fraction, picked on these same images
    deletion_curve: tuple[float, ...]  # mean normalised score after each deletion step

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
    deletion_auc: dict[str, float]


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

    def method(self, name: str) -> MethodScore:
        return next(m for m in self.methods if m.name == name)

    def summary_json(self) -> dict:
        """What `--json` prints: the per-method scores, the image count and the protocol."""
        return {
            "methods": {m.name: m.to_json() for m in self.methods},
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
            "crosscheck": {"provider": self.crosscheck.provider, "passed": self.crosscheck.passed,
                           "note": self.crosscheck.note},
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
    progress: Callable[[str, int, int], None] | None = None,
) -> Localization:
    """Score each method's map (and each control's) against the true boxes.

    With no model, the shipped localisation benchmark (`models/cluttered_digits`); with no images
    or boxes, the card's. Layers: as given, else the deepest of the card's suggested layers, else
    the deepest `auto` layer; CID and Grad-CAM are computed at each. The class scored is the boxes
    CSV's `label` column when it has one (index or class name), else the model's prediction.
    """
    start = time.perf_counter()
    methods, controls = _checked(methods, MODEL_METHODS, "method"), _checked(controls, CONTROLS, "control")
    report_progress = progress or (lambda stage, advance, total: None)
    torch_device = resolve_device(device)
    model = Path(model) if model is not None else _benchmark_model()
    loaded = load_model(model)
    card = read_card(model, loaded.proto)
    images = list(images) if images else card_images(model, card)
    boxes = Path(boxes) if boxes is not None else _card_boxes(model, card)
    input_name = input_name or card.get("input")
    shape = model_input_shape(loaded.proto, input_name, input_shape)
    flags = {k: v for k, v in (preprocessing_overrides or {}).items() if v is not None}
    preprocessing = resolve_preprocessing(card, shape, **flags)
    c, h, w = canonical_shape(shape, preprocessing.layout)
    canonical = load_images(find_images(images), (c, h, w))
    truths = _true_boxes(canonical, boxes)
    layer_names, output = _layers_and_output(loaded, card, layers, input_name, input_shape)

    preprocess = Preprocess(preprocessing, c)
    batch = torch.from_numpy(np.stack([image.pixels for image in canonical]))
    with torch.no_grad():
        probe = preprocess(batch[:1]).numpy()
    prepared = prepare(loaded, [*layer_names, output], input_name, input_shape, probe=probe,
                       prefer_cuda=torch_device.type == "cuda")
    classifier = Classifier(preprocess, prepared.module, layer_names).to(torch_device)
    x = batch.to(torch_device)
    with torch.no_grad():
        clean = torch.cat([classifier(x[i:i + 64]) for i in range(0, len(x), 64)]).cpu()
    targets, target_rule = _targets(boxes, canonical, card, clean)
    several = len(layer_names) > 1
    name_of = lambda method, layer: f"{method}@{layer}" if several and layer else method  # noqa: E731

    maps: dict[str, np.ndarray] = {}
    kinds: dict[str, tuple[str, str | None]] = {}
    notes: list[str] = []
    if "cid" in methods:
        report = analyze(model, images, layer_names, settings=settings, preprocessing=preprocessing, device=device,
                         input_name=input_name, input_shape=input_shape, progress=progress)
        for layer in layer_names:
            results = [r for r in report.results if r.layer == layer]
            maps[name_of("cid", layer)] = np.stack([r.sensitivity for r in results])
            kinds[name_of("cid", layer)] = ("cid", layer)
            missed = [r.image for r in results if not r.converged]
            if missed:
                notes.append(f"CID at {layer}: {len(missed)} images missed the budget (|D/τ−1| > "
                             f"{settings.tolerance}): {', '.join(missed[:3])}; their maps are scored anyway")
    for method in (m for m in methods if m != "cid"):
        for layer in (layer_names if method == "gradcam" else [None]):
            report_progress(f"{method} maps", 0, 1)
            maps[name_of(method, layer)] = model_map(method, classifier, x, targets, layer)
            kinds[name_of(method, layer)] = (method, layer)
            report_progress(f"{method} maps", 1, 1)
    for control in controls:
        maps[control] = np.stack([control_map(control, image.pixels) for image in canonical])
        kinds[control] = (control, None)

    score = _class_score(classifier, torch_device, clean)
    per_image = {name: [] for name in maps}
    image_scores = []
    for i, image in enumerate(canonical):
        fill = image.pixels.reshape(c, -1).mean(1)  # deleted pixels take the image's mean colour
        ious, hits, aucs, found = {}, {}, {}, {}
        for name, stack in maps.items():
            found[name] = box_from_map(stack[i])
            ious[name] = iou(found[name], truths[i])
            hits[name] = bool(pointing_hit(stack[i], truths[i]))
            curve, aucs[name] = deletion_curve(lambda b, t=targets[i]: score(b, t), image.pixels, stack[i],
                                               DELETION_STEPS, fill)
            per_image[name].append(curve[:, 1] / curve[0, 1] if curve[0, 1] else curve[:, 1] * np.nan)
        image_scores.append(ImageScore(image.name, truths[i], int(targets[i]), found, ious, hits, aucs))
        report_progress("localisation and deletion (images)", 1, len(canonical))

    scores = tuple(_method_score(name, kinds[name], maps[name], truths, image_scores, per_image[name])
                   for name in maps)
    verdict, beaten = _verdict(scores)
    protocol = {
        "box_rule": f"threshold the map at a fraction of its maximum (fixed in advance: {DEFAULT_FRACTION}); "
                    "bounding box of the largest 4-connected region at or above it",
        "fraction": DEFAULT_FRACTION,
        "fraction_sweep": list(FRACTIONS),
        "hit": f"IoU >= {IOU_HIT} with the true box (model resolution)",
        "pointing": "the map's maximum lies inside the true box",
        "deletion": f"most relevant pixels first, {DELETION_STEPS} equal steps, deleted pixels set to the image's "
                    "mean colour; score = softmax probability of the target class; area under the curve / clean score",
        "target": target_rule,
        "cid_map": "sensitivity 1/σ² at the layer (METHOD §5), τ and steps as in settings",
        "gradcam": "Captum LayerGradCam at the layer, ReLU, bilinear upsampling",
        "gradient": "Captum Saliency, |gradient| max over channels",
        "ig": f"Captum IntegratedGradients, black baseline, {IG_STEPS} steps, |attribution| summed over channels",
        "controls": {"brightness": "pixel intensity", "contrast": "local std in a 5×5 window",
                     "edges": "Sobel gradient magnitude", "center": "Gaussian at the image centre, σ = side/4"},
        "tau": settings.tau, "steps": settings.steps, "samples": settings.samples, "grid": settings.grid,
        "seed": settings.seed,
    }
    from . import __version__

    return Localization(
        tool_version=__version__, model_path=str(loaded.path), model_sha256=loaded.sha256, layers=tuple(layer_names),
        settings=settings, preprocessing=preprocessing, device=str(torch_device), crosscheck=prepared.crosscheck,
        methods=scores, images=tuple(image_scores), protocol=protocol, verdict=verdict, controls_beaten=beaten,
        maps=maps, canonical_images=tuple(image.pixels for image in canonical),
        seconds=time.perf_counter() - start, notes=tuple(notes),
    )


def _checked(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    names = [n.strip().lower() for n in names if n.strip()]
    for name in names:
        if name not in known:
            raise InputError(f"unknown {what} '{name}'{close_matches(name, known, 1)} (choose from {', '.join(known)})")
    return list(dict.fromkeys(names))


def _benchmark_model() -> Path:
    if not BENCHMARK_MODEL.is_file():
        raise InputError(f"the shipped localisation benchmark {BENCHMARK_MODEL} is missing; install from a source "
                         "checkout (pip install -e .) or give a MODEL with --images and --boxes")
    return BENCHMARK_MODEL


def _card_boxes(model: Path, card: dict) -> Path:
    if not card.get("foreground_boxes"):
        raise InputError(f"no --boxes given and the card of {model.name} names none; "
                         "give a CSV with columns file,x0,y0,x1,y1")
    return model.parent / card["foreground_boxes"]


def _true_boxes(images: Sequence[CanonicalImage], path: Path) -> list[Box]:
    """Each image's box from the CSV (file pixels), as a box at the model's resolution."""
    boxes = read_boxes(path)
    missing = [image.name for image in images if image.name not in boxes]
    if missing:
        raise InputError(f"{path}: no box for {len(missing)} of the images ({', '.join(missing[:3])}); "
                         "add a row file,x0,y0,x1,y1 for each image or leave those images out")
    truths = []
    for image in images:
        rows, columns = np.nonzero(box_mask(boxes[image.name], image))
        truths.append((int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1))
    return truths


def _layers_and_output(loaded: LoadedModel, card: dict, layers: Sequence[str] | None, input_name, input_shape):
    """The chosen layers' names and the graph output that holds the class scores."""
    normalised = normalise(loaded.proto, input_name, input_shape)
    candidates = list_layers(normalised)
    if layers:
        chosen = select_layers(candidates, layers)
    elif card.get("suggested_layers"):
        chosen = select_layers(candidates, card["suggested_layers"][-1:])
    else:
        chosen = select_layers(candidates, ["auto"])[-1:]
    output = normalised.proto.graph.output[0].name
    return [layer.name for layer in chosen], output


def _targets(path: Path, images: Sequence[CanonicalImage], card: dict, scores: torch.Tensor) -> tuple[list[int], str]:
    """The class to explain per image: the CSV's `label` column (index or class name), else the prediction."""
    with open(path, newline="") as handle:
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
            raise InputError(f"{path}: label '{label}' of {image.name} is neither a class index 0..{count - 1} "
                             f"nor a class name of the model card{close_matches(label, classes)}")
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


def _method_score(name, kind, stack, truths, images: Sequence[ImageScore], curves) -> MethodScore:
    hits = np.array([image.ious[name] >= IOU_HIT for image in images])
    sweep = {f: np.mean([iou(box_from_map(m, f), t) >= IOU_HIT for m, t in zip(stack, truths)]) for f in FRACTIONS}
    best = max(sweep, key=lambda f: (sweep[f], -abs(f - DEFAULT_FRACTION)))
    n = len(images)
    return MethodScore(
        name=name, method=kind[0], control=kind[0] in CONTROLS, layer=kind[1],
        loc_acc=float(hits.mean()), loc_acc_se=float(np.sqrt(hits.mean() * (1 - hits.mean()) / n)),
        mean_iou=float(np.mean([image.ious[name] for image in images])),
        pointing_acc=float(np.mean([image.pointing[name] for image in images])),
        deletion_auc=float(np.nanmean([image.deletion_auc[name] for image in images])),
        best_fraction=float(best), loc_acc_best=float(sweep[best]),
        deletion_curve=tuple(float(v) for v in np.nanmean(np.stack(curves), axis=0)),
    )


def _verdict(scores: Sequence[MethodScore]) -> tuple[str, bool]:
    """Which method localises best and by how much; whether any model-free control does as well."""
    methods = sorted((s for s in scores if not s.control), key=lambda s: -s.loc_acc)
    controls = [s for s in scores if s.control]
    if not methods:
        return "only model-free controls were run: nothing to compare", False
    best = methods[0]
    text = f"best localisation: {best.name} {best.loc_acc:.3f} ± {best.loc_acc_se:.3f}"
    if len(methods) > 1:
        runner = methods[1]
        text += f", {best.loc_acc - runner.loc_acc:+.3f} over {runner.name} ({runner.loc_acc:.3f})"
    if not controls:
        return text + "; no model-free control was run, so the benchmark itself is untested", False
    top_loc = max(controls, key=lambda s: s.loc_acc)
    top_point = max(controls, key=lambda s: s.pointing_acc)
    best_point = max(methods, key=lambda s: s.pointing_acc)
    beaten = top_loc.loc_acc < best.loc_acc and top_point.pointing_acc < best_point.pointing_acc
    if beaten:
        text += (f"; every model-free control scores below it (best control: {top_loc.name} {top_loc.loc_acc:.3f} "
                 f"localisation, {top_point.name} {top_point.pointing_acc:.3f} pointing)")
    else:
        text += (f"; WARNING: a model-free control does as well ({top_loc.name} {top_loc.loc_acc:.3f} localisation, "
                 f"{top_point.name} {top_point.pointing_acc:.3f} pointing): this data set cannot support a claim "
                 "about which method localises best")
    return text, beaten
