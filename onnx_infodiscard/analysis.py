"""`analyze`: the product's main job, from a model (or an open `Session`) and images to a `Report`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import metrics
from .embedded import card_images
from .execute import solve_all
from .foreground import Foreground
from .images import find_images, load_images
from .perturb import RECONSTRUCTION_FLOOR, SolverSettings, peak_memory, solve
from .preprocess import Preprocessing
from .results import RELIABILITY_FLAG, ImageSummary, LayerResult, Report, RUResult
from .rowcache import RowCache
from .rows import Row, SolvedRow, distortion
from .ru import DecoderConfig, check_cache_dir, trained_decoder
from .session import Session, open_session

if TYPE_CHECKING:
    from .scale import RayPool

Progress = Callable[[str, int, int], None]
#: What a `LayerResult` takes from its `SolvedRow` as it is.
SOLVED_FIELDS = (
    "converged",
    "d_over_tau",
    "eval_samples",
    "multiplier",
    "steps",
    "seconds",
    "extra_steps",
    "reliability",
)


def analyze(
    model: str | Path | Session | None = None,
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
    cache: RowCache | None = None,
    ray: str | RayPool | None = None,
    progress: Progress | None = None,
) -> Report:
    """Measure each chosen layer's information discarding on each image.

    `model` is a path or a `Session` already open (then `images`, preprocessing and input options
    are the session's, and `layers` picks among its layers). With no model, the embedded default
    (the shipped digits CNN); with no images, the images its card names; with no layers, the card's
    `suggested_layers`, else `auto`. With `ru`, also reconstruction uncertainty, decoders trained on
    `train_images` (default: the card's) and cached. `cache` reuses and stores solved rows; `ray`
    (`auto` or an address) solves them on a Ray cluster; a `scale.RayPool` keeps its workers
    across several calls. `progress(stage, advance, total)`.
    """
    start = time.perf_counter()
    settings.validate()
    if ru:
        check_cache_dir()  # before any work: a cache it cannot write would fail after the training
    if not isinstance(model, Session):
        model = open_session(
            model,
            images,
            layers,
            preprocessing=preprocessing,
            preprocessing_overrides=preprocessing_overrides,
            input_name=input_name,
            input_shape=input_shape,
            device=device,
        )
        layers = None
    session = model
    chosen = [session.layer(name) for name in layers] if layers else list(session.layers)
    settings = settings.on(session.device)
    foreground = foreground or _card_foreground(session, images)
    masks = foreground.masks(session.images) if foreground else [None] * len(session.images)
    rows = [Row(layer.name, i) for layer in chosen for i in range(len(session.images))]
    solved, from_cache = solve_all(session, rows, settings, cache=cache, ray=ray, progress=progress)
    ru_results = dict.fromkeys(rows)
    if ru:
        ru_progress = progress or (lambda stage, advance, total: None)
        ru_results = _reconstruction_uncertainty(
            session, rows, settings, train_images, decoder_config, retrain, ru_progress
        )
    results = [_layer_result(session, row, solved[row], ru_results[row], masks[row.image], settings) for row in rows]
    summaries = tuple(
        ImageSummary(image.name, metrics.input_cid(image.pixels, settings.tau), mask is not None)
        for image, mask in zip(session.images, masks)
    )
    return Report(
        tool_version=_version(),
        model_path=str(session.loaded.path),
        model_sha256=session.loaded.sha256,
        input_name=session.normalised.input_name,
        input_shape=tuple(session.normalised.input_shape),
        preprocessing=session.preprocessing,
        settings=settings,
        foreground=foreground.describe() if foreground else None,
        device=str(session.device),
        layers=tuple(chosen),
        crosscheck=session.crosscheck,
        batch_safe=session.conversion.batch_safe,
        passes=tuple(f"{p.name}: {p.detail}" for p in session.normalised.passes),
        images=summaries,
        results=tuple(results),
        canonical_images=tuple(i.pixels for i in session.images),
        seconds=time.perf_counter() - start,
        notes=tuple(_notes(session, rows, solved, from_cache, cache)),
        cached_rows=from_cache,
        peak_memory=peak_memory(session.device),
    )


def _layer_result(session: Session, row: Row, solved: SolvedRow, ru: RUResult | None, mask, settings) -> LayerResult:
    layer, image = session.layer(row.layer), session.images[row.image]
    entropy = metrics.entropy_map(solved.log_sigma)
    value = metrics.cid(entropy)
    return LayerResult(
        image=image.name,
        layer=layer.name,
        layer_index=layer.index,
        depth=layer.depth,
        log_sigma=solved.log_sigma,
        entropy=entropy,
        sensitivity=metrics.sensitivity_map(solved.log_sigma),
        cid=value,
        cid_total=metrics.cid_total(entropy, image.pixels.shape[0]),
        delta_cid=value - metrics.input_cid(image.pixels, settings.tau),
        concentration=metrics.concentration(entropy, mask) if mask is not None else None,
        saturated_fraction=metrics.saturated_fraction(solved.log_sigma, settings.sigma_max),
        d_over_tau_se=solved.standard_error,
        ru=ru,
        **{name: getattr(solved, name) for name in SOLVED_FIELDS},
    )


def _notes(
    session: Session, rows: Sequence[Row], solved: dict[Row, SolvedRow], from_cache: int, cache: RowCache | None
) -> list[str]:
    notes = list(session.notes)
    if from_cache:
        notes.append(f"{from_cache} of {len(rows)} rows from the row cache ({cache.root})")
    if any(solved[row].halvings for row in rows):
        notes.append("out of device memory: a batch was halved and its solve went on")
    extra = [solved[row].extra_steps for row in rows if solved[row].extra_steps]
    if extra:
        notes.append(f"{len(extra)} rows needed extra steps to meet the budget (up to {max(extra)})")
    unreliable = [row for row in rows if solved[row].reliability < RELIABILITY_FLAG]
    if unreliable:
        notes.append(
            f"{len(unreliable)} maps have a split-half reliability below {RELIABILITY_FLAG}: their "
            "pixel structure is partly Monte Carlo noise (more samples or steps, or a coarser grid, help)"
        )
    if cache and cache.warnings:
        notes.extend(cache.warnings)
    if not session.conversion.batch_safe:
        notes.append("the graph mixes samples within a batch; ran one sample at a time")
    return notes


def _card_foreground(session: Session, images: Sequence[str | Path] | None) -> Foreground | None:
    """The card's boxes apply when the images are the card's own image folder."""
    card, model = session.card, session.loaded.path
    if not card.get("foreground_boxes") or not card.get("images"):
        return None
    own = card.image_folder(model, "images").resolve()
    given = images or [own]
    if all(Path(i).resolve() == own or Path(i).resolve().parent == own for i in given):
        return Foreground(boxes_csv=card.image_folder(model, "foreground_boxes"))
    return None


def _reconstruction_uncertainty(
    session: Session,
    rows: Sequence[Row],
    settings: SolverSettings,
    train_images,
    config: DecoderConfig,
    retrain: bool,
    progress: Progress,
) -> dict[Row, RUResult]:
    """Train (or load) one decoder per layer, then solve the RU objective under the same budget."""
    paths = train_images or card_images(session.loaded.path, session.card, "train_images")
    train = np.stack([image.pixels for image in load_images(find_images(paths), session.shape)])
    features = {name: session.pipeline(name) for name in dict.fromkeys(row.layer for row in rows)}
    decoders = {
        name: trained_decoder(
            feature,
            name,
            train,
            session.loaded.sha256,
            config,
            retrain,
            lambda advance, total, name=name: progress(f"RU: decoder {name}", advance, total),
            session.device,
        )
        for name, feature in features.items()
    }
    total = len(rows) * settings.steps
    solution = solve(
        distortion(session, rows, settings),
        settings,
        lambda advance: progress("RU σ (images×layers×steps)", advance * len(rows), total),
        decoders={name: d.module for name, d in decoders.items()},
        reconstruction_samples=max(256, settings.eval_samples),
    )
    errors = solution.reconstruction_error
    results = {}
    for k, row in enumerate(rows):
        decoder = decoders[row.layer]
        entropy = 0.5 * np.log(2 * np.pi * np.e * (errors[k] + RECONSTRUCTION_FLOOR))  # (C, H, W)
        results[row] = RUResult(
            mean=float(entropy.mean()),
            per_channel=tuple(float(v) for v in entropy.mean((1, 2))),
            map=entropy.mean(0),
            converged=bool(solution.converged[k]),
            d_over_tau=float(solution.d_over_tau[k]),
            decoder_mse=decoder.held_out_mse,
            decoder_psnr=decoder.held_out_psnr,
        )
    return results


def _version() -> str:
    from . import __version__

    return __version__


__all__ = ["Foreground", "Report", "analyze"]
