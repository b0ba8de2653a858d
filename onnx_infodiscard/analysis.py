"""`analyze`: the product's main job, from a model path and images to a typed `Report`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .check import prepare
from .crosscheck import CrossCheck
from .embedded import card_images, default_model
from .errors import InputError
from .images import (
    CanonicalImage, box_mask, center_mask, find_images, load_images, mask_from_file, parse_box, read_boxes,
)
from .layers import Layer
from .load import load_model
from .passes import dims as _dims, image_input
from .perturb import RECONSTRUCTION_FLOOR, Distortion, Pipeline, SolverSettings, resolve_device, solve
from .ru import DecoderConfig, trained_decoder
from .preprocess import Preprocess, Preprocessing, canonical_shape, read_card, resolve_preprocessing

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Foreground:
    """Where the object is: one of a box (pixels of the file), a boxes CSV, a mask file, or 'center'."""

    box: tuple[int, int, int, int] | None = None
    boxes_csv: Path | None = None
    mask: Path | None = None
    center: bool = False

    @classmethod
    def parse(cls, fg: str | None = None, fg_mask: str | Path | None = None, fg_boxes: str | Path | None = None):
        given = [v for v in (fg, fg_mask, fg_boxes) if v is not None]
        if len(given) > 1:
            raise InputError("give one foreground: --fg, --fg-mask or --fg-boxes")
        if fg is not None:
            return cls(center=True) if fg.strip().lower() in ("center", "centre") else cls(box=parse_box(fg))
        if fg_mask is not None:
            return cls(mask=Path(fg_mask))
        if fg_boxes is not None:
            return cls(boxes_csv=Path(fg_boxes))
        return None

    def describe(self) -> str:
        if self.center:
            return "center (central box, 2/3 of each side)"
        if self.box:
            return "box " + ",".join(map(str, self.box))
        return f"mask {self.mask}" if self.mask else f"boxes {self.boxes_csv}"

    def masks(self, images: Sequence[CanonicalImage]) -> list[np.ndarray | None]:
        if self.center:
            return [center_mask(image) for image in images]
        if self.box:
            return [box_mask(self.box, image) for image in images]
        if self.mask:
            return [mask_from_file(self.mask, image) for image in images]
        boxes = read_boxes(self.boxes_csv)
        return [box_mask(boxes[image.name], image) if image.name in boxes else None for image in images]


@dataclass(frozen=True)
class RUResult:
    """Reconstruction uncertainty of one (image, layer) under the same budget τ as CID."""

    mean: float  # nats per input value: mean over c, u, v of ½ log(2πe·E[(g(h(x')) − x)²])
    per_channel: tuple[float, ...]
    map: np.ndarray = field(repr=False)  # (H, W), averaged over channels
    converged: bool = False
    d_over_tau: float = float("nan")
    decoder_mse: float = float("nan")  # held out, canonical units²
    decoder_psnr: float = float("nan")  # dB

    def to_json(self) -> dict:
        return {"mean": self.mean, "per_channel": list(self.per_channel), "converged": self.converged,
                "d_over_tau": self.d_over_tau, "decoder_mse": self.decoder_mse, "decoder_psnr": self.decoder_psnr}


@dataclass(frozen=True)
class LayerResult:
    """One (image, layer): its σ solution and metrics. Maps are (H, W) at the model's resolution."""

    image: str
    layer: str
    layer_index: int
    depth: float
    log_sigma: np.ndarray = field(repr=False)  # log of canonical units
    entropy: np.ndarray = field(repr=False)  # H_uv, nats per input value
    sensitivity: np.ndarray = field(repr=False)  # 1/σ², max 1
    cid: float  # nats per input value
    cid_total: float  # nats
    delta_cid: float  # CID − CID of the input (identity layer), nats per value
    concentration: float | None  # mean_bg H − mean_fg H, nats; None without a foreground
    saturated_fraction: float
    converged: bool
    d_over_tau: float
    d_over_tau_se: float
    eval_samples: int
    multiplier: float
    steps: int
    seconds: float
    ru: RUResult | None = None

    def to_json(self) -> dict:
        arrays = ("log_sigma", "entropy", "sensitivity", "ru")
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in arrays}
        data["ru"] = self.ru.to_json() if self.ru else None
        return data


@dataclass(frozen=True)
class ImageSummary:
    name: str
    cid_input: float  # nats per value: the identity layer's optimum, sqrt(τ)·std(x)
    has_foreground: bool


@dataclass(frozen=True)
class Report:
    """Everything one analysis found, with what produced it."""

    tool_version: str
    model_path: str
    model_sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    preprocessing: Preprocessing
    settings: SolverSettings
    foreground: str | None
    device: str
    layers: tuple[Layer, ...]
    crosscheck: CrossCheck
    batch_safe: bool
    passes: tuple[str, ...]
    images: tuple[ImageSummary, ...]
    results: tuple[LayerResult, ...]
    canonical_images: tuple[np.ndarray, ...] = field(repr=False)  # (C, H, W) each, for overlays
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    audit: tuple = ()  # audit.RuleOutcome of each --fail-if rule

    @property
    def converged(self) -> bool:
        return all(r.converged for r in self.results)

    def layer_means(self) -> list[dict]:
        """Per layer, the metrics averaged over images (converged results only)."""
        rows = []
        for layer in self.layers:
            results = [r for r in self.results if r.layer == layer.name and r.converged]
            ru = [r.ru for r in self.results if r.layer == layer.name and r.ru is not None]
            rows.append({
                "layer": layer.name, "index": layer.index, "op_type": layer.op_type, "depth": layer.depth,
                "n_images": len(results),
                **{key: _mean_or_none([getattr(r, key) for r in results])
                   for key in ("cid", "delta_cid", "concentration", "d_over_tau")},
                "ru": _mean_or_none([r.mean for r in ru if r.converged]) if ru else None,
                "decoder_psnr": _mean_or_none([r.decoder_psnr for r in ru]) if ru else None,
            })
        return rows

    def to_json(self) -> dict:
        from . import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "model": {"path": self.model_path, "sha256": self.model_sha256, "input": self.input_name,
                      "input_shape": list(self.input_shape)},
            "preprocessing": self.preprocessing.to_json(),
            "parameters": {**asdict(self.settings), "foreground": self.foreground, "device": self.device},
            "layers": [asdict(layer) for layer in self.layers],
            "crosscheck": {
                "provider": self.crosscheck.provider, "note": self.crosscheck.note,
                "tolerance": self.crosscheck.tolerance, "passed": self.crosscheck.passed,
                "layers": [asdict(a) for a in self.crosscheck.layers],
            },
            "batch_safe": self.batch_safe,
            "normalisation": list(self.passes),
            "images": [asdict(image) for image in self.images],
            "results": [r.to_json() for r in self.results],
            "summary": {"converged": self.converged, "layers": self.layer_means()},
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "audit": self.audit_json(),
        }

    def audit_json(self) -> dict | None:
        if not self.audit:
            return None
        return {"failed": any(o.failed for o in self.audit), "outcomes": [o.to_json() for o in self.audit]}


def analyze(
    model: str | Path | None = None,
    images: Sequence[str | Path] | None = None,
    layers: Sequence[str] | None = None,
    *,
    settings: SolverSettings = SolverSettings(),
    preprocessing: Preprocessing | None = None,
    preprocessing_overrides: dict | None = None,
    foreground: Foreground | None = None,
    device: str = "auto",
    input_name: str | None = None,
    input_shape: Sequence[int] | None = None,
    ru: bool = False,
    train_images: Sequence[str | Path] | None = None,
    decoder_config: DecoderConfig = DecoderConfig(),
    retrain: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Measure each chosen layer's information discarding on each image.

    With no model, the embedded default (the shipped digits CNN); with no images, the images its
    model card names; with no layers, the card's `suggested_layers`, else `auto`. Preprocessing: `preprocessing` as given, else the model card with
    `preprocessing_overrides` (preset, scale, mean, std, layout, bgr) on top.
    With `ru`, also reconstruction uncertainty: decoders trained on `train_images` (default: the
    card's) and cached. `progress(stage, advance, total)` reports optimisation steps and epochs.
    """
    start = time.perf_counter()
    settings.validate()
    torch_device = resolve_device(device)
    settings = settings.on(torch_device)
    model = Path(model) if model is not None else default_model()
    loaded = load_model(model)
    card = read_card(model, loaded.proto)
    if not images:
        images = card_images(model, card)
    if input_name is None and card.get("input"):
        input_name = card["input"]
    if not layers:
        layers = card.get("suggested_layers") or ["auto"]
    shape = model_input_shape(loaded.proto, input_name, input_shape)
    if preprocessing is None:
        flags = {k: v for k, v in (preprocessing_overrides or {}).items() if v is not None}
        preprocessing = resolve_preprocessing(card, shape, **flags)
    c, h, w = canonical_shape(shape, preprocessing.layout)
    canonical = load_images(find_images(images), (c, h, w))
    if foreground is None and card.get("foreground_boxes") and _same_folder(images, card, Path(model)):
        foreground = Foreground(boxes_csv=Path(model).parent / card["foreground_boxes"])
    masks = foreground.masks(canonical) if foreground else [None] * len(canonical)

    preprocess = Preprocess(preprocessing, c)
    batch = torch.from_numpy(np.stack([image.pixels for image in canonical]))
    with torch.no_grad():
        probe = preprocess(batch[:1]).numpy()
    prepared = prepare(loaded, layers, input_name, input_shape, probe=probe, prefer_cuda=torch_device.type == "cuda")
    names = [layer.name for layer in prepared.layers]
    features = {name: Pipeline(preprocess, prepared.module.only(name), name).to(torch_device) for name in names}
    image_of_row = [i for _ in names for i in range(len(canonical))]
    layer_of_row = [name for name in names for _ in canonical]
    distortion = Distortion(features, batch.to(torch_device), image_of_row, layer_of_row, [i.name for i in canonical],
                            settings.memory_format)
    report_progress = progress or (lambda stage, advance, total: None)
    work = distortion.rows * settings.steps  # images × layers × steps
    solution = solve(distortion, settings,
                     lambda advance: report_progress("CID σ (images×layers×steps)", advance * distortion.rows, work))
    ru_results = (
        _reconstruction_uncertainty(distortion, features, settings, loaded.sha256, train_images or
                                    card_images(model, card, "train_images"), (c, h, w), decoder_config, retrain,
                                    report_progress, torch_device)
        if ru else [None] * distortion.rows
    )

    results = []
    summaries = []
    notes = []
    if solution.max_batch < settings.max_batch:
        notes.append(f"out of device memory: batch halved to {solution.max_batch} forward passes")
    if not prepared.conversion.batch_safe:
        notes.append("the graph mixes samples within a batch; ran one sample at a time")
    for i, image in enumerate(canonical):
        base = metrics.input_cid(image.pixels, settings.tau)
        summaries.append(ImageSummary(image.name, base, masks[i] is not None))
        for j, layer in enumerate(prepared.layers):
            row = j * len(canonical) + i
            log_sigma = solution.log_sigma[row]
            entropy = metrics.entropy_map(log_sigma)
            value = metrics.cid(entropy)
            results.append(LayerResult(
                image=image.name, layer=layer.name, layer_index=layer.index, depth=layer.depth,
                log_sigma=log_sigma, entropy=entropy, sensitivity=metrics.sensitivity_map(log_sigma),
                cid=value, cid_total=metrics.cid_total(entropy, c), delta_cid=value - base,
                concentration=metrics.concentration(entropy, masks[i]) if masks[i] is not None else None,
                saturated_fraction=metrics.saturated_fraction(log_sigma, settings.sigma_max),
                converged=bool(solution.converged[row]), d_over_tau=float(solution.d_over_tau[row]),
                d_over_tau_se=float(solution.standard_error[row]), eval_samples=int(solution.eval_samples[row]),
                multiplier=float(solution.multiplier[row]), steps=solution.steps,
                seconds=solution.seconds / len(solution.log_sigma), ru=ru_results[row],
            ))
    return Report(
        tool_version=_version(), model_path=str(loaded.path), model_sha256=loaded.sha256,
        input_name=prepared.normalised.input_name, input_shape=tuple(prepared.normalised.input_shape),
        preprocessing=preprocessing, settings=settings,
        foreground=foreground.describe() if foreground else None, device=str(torch_device),
        layers=prepared.layers, crosscheck=prepared.crosscheck, batch_safe=prepared.conversion.batch_safe,
        passes=tuple(f"{p.name}: {p.detail}" for p in prepared.normalised.passes),
        images=tuple(summaries), results=tuple(results),
        canonical_images=tuple(image.pixels for image in canonical),
        seconds=time.perf_counter() - start, notes=tuple(notes),
    )


def _reconstruction_uncertainty(distortion, features, settings, model_sha256, train_paths, shape, config, retrain,
                                progress, device) -> list[RUResult]:
    """Train (or load) one decoder per layer, then solve the RU objective under the same budget."""
    train = np.stack([image.pixels for image in load_images(find_images(train_paths), shape)])
    decoders = {}
    for name, feature in features.items():
        decoders[name] = trained_decoder(
            feature, name, train, model_sha256, config, retrain,
            lambda advance, total, name=name: progress(f"RU: decoder {name}", advance, total), device,
        )
    solution, errors = solve(
        distortion, settings,
        lambda advance: progress("RU σ (images×layers×steps)", advance * distortion.rows, distortion.rows * settings.steps),
        decoders={name: d.module for name, d in decoders.items()},
        reconstruction_samples=max(256, settings.eval_samples),
    )
    results = []
    for row in range(distortion.rows):
        decoder = decoders[distortion.layer_names[int(distortion.layer_of_row[row])]]
        entropy = 0.5 * np.log(2 * np.pi * np.e * (errors[row] + RECONSTRUCTION_FLOOR))  # (C, H, W)
        results.append(RUResult(
            mean=float(entropy.mean()), per_channel=tuple(float(v) for v in entropy.mean((1, 2))),
            map=entropy.mean(0), converged=bool(solution.converged[row]),
            d_over_tau=float(solution.d_over_tau[row]), decoder_mse=decoder.held_out_mse,
            decoder_psnr=decoder.held_out_psnr,
        ))
    return results


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def model_input_shape(proto, input_name, input_shape) -> tuple[int, ...]:
    """The image input's dims (batch 1) before normalisation, to size the canonical image."""
    if input_shape is not None:
        return (1, *[int(v) for v in list(input_shape)[1:]])
    from .passes import drop_initializer_inputs

    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.graph.ClearField("node")
    dims = _dims(image_input(drop_initializer_inputs(copy)[0], input_name))
    if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
        raise InputError(f"the model's image input has dynamic dims {dims}; give them with --input-shape N,C,H,W")
    return (1, *dims[1:])


def _same_folder(images: Sequence[str | Path], card: dict, model: Path) -> bool:
    """The card's boxes apply when the images are the card's own image folder."""
    folder = card.get("images")
    if not folder:
        return False
    own = (model.parent / folder).resolve()
    return all(Path(i).resolve() == own or Path(i).resolve().parent == own for i in images)


def _version() -> str:
    from . import __version__

    return __version__
