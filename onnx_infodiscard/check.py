"""The import pipeline end to end: load -> normalise -> choose layers -> convert -> cross-check."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .convert import Conversion, convert
from .crosscheck import DEFAULT_RTOL, CrossCheck, cross_check
from .layers import (
    Layer,
    Selection,
    check_differentiable,
    check_single_input,
    constant_tensors,
    list_layers,
    selection,
)
from .load import LoadedModel, load_model
from .passes import NormalisedModel, normalise


@dataclass(frozen=True)
class PreparedModel:
    """Everything the analysis needs from the graph: layers chosen, module converted and verified."""

    loaded: LoadedModel
    normalised: NormalisedModel
    layers: tuple[Layer, ...]
    conversion: Conversion
    crosscheck: CrossCheck
    seconds: float
    notes: tuple[str, ...] = ()  # e.g. why `auto` kept fewer layers than it asks for

    @property
    def module(self):
        return self.conversion.module


def open_model(path: str | Path, input_name: str | None = None, input_shape: Sequence[int] | None = None):
    """Load and normalise: what `layers` needs."""
    loaded = load_model(path)
    return loaded, normalise(loaded.proto, input_name, input_shape)


def prepare(
    path: str | Path | LoadedModel,
    layers: Sequence[str] = ("auto",),
    input_name: str | None = None,
    input_shape: Sequence[int] | None = None,
    tolerance: float = DEFAULT_RTOL,
    probe: np.ndarray | None = None,
    prefer_cuda: bool = False,
) -> PreparedModel:
    """Load, normalise, choose layers, convert, and cross-check on `probe` (model-space input;
    default: uniform noise). `path` may be a model `load_model` already read."""
    start = time.perf_counter()
    loaded = path if isinstance(path, LoadedModel) else load_model(path)
    normalised = normalise(loaded.proto, input_name, input_shape)
    chosen = choose_layers(normalised, layers)
    notes, chosen = chosen.notes, list(chosen.layers)
    if probe is None:
        probe = np.random.default_rng(0).random(normalised.input_shape, dtype=np.float32)
    conversion, result = convert_and_check(normalised, chosen, probe, tolerance, prefer_cuda)
    return PreparedModel(loaded, normalised, tuple(chosen), conversion, result, time.perf_counter() - start, notes)


def choose_layers(normalised: NormalisedModel, specs: Sequence[str]) -> Selection:
    """Names, indices, globs or `auto` to layers the image reaches differentiably, with notes on
    what `auto` could not give."""
    chosen = selection(list_layers(normalised), specs, constant_tensors(normalised))
    check_differentiable(normalised, list(chosen.layers))
    check_single_input(normalised, list(chosen.layers))
    return chosen


def convert_and_check(
    normalised: NormalisedModel, layers: Sequence[Layer], probe: np.ndarray, tolerance: float, prefer_cuda: bool
) -> tuple[Conversion, CrossCheck]:
    """onnx2torch at `layers`, then every layer against onnxruntime on `probe`.

    Raises ConversionError when any layer disagrees beyond `tolerance`.
    """
    conversion = convert(normalised, layers)
    with torch.no_grad():
        features = conversion.module(torch.from_numpy(probe))
    source = normalised.source if normalised.dequantised else None  # the quantised original, compared too
    result = cross_check(
        conversion.truncated, normalised.input_name, features, probe, tolerance, prefer_cuda, source=source
    )
    result.raise_on_failure()
    return conversion, result
