"""One run's model, built once: load → card → preprocessing → images → normalise → layers →
convert → cross-check. `analyze`, `localize`, `compare`, the benchmarks and the scale-out workers
all take a `Session`, so no run prepares the same model twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .card import ModelCard
from .check import choose_layers, convert_and_check
from .convert import Conversion
from .crosscheck import DEFAULT_RTOL, CrossCheck
from .embedded import card_images, default_model
from .errors import InputError
from .images import CanonicalImage, find_images, load_images
from .layers import Layer
from .load import LoadedModel, load_model
from .passes import NormalisedModel, dims, drop_initializer_inputs, image_input, normalise
from .passes.inputs import drop_unread_inputs
from .perturb import Pipeline, resolve_device
from .preprocess import Preprocess, Preprocessing, canonical_shape, resolve_preprocessing


@dataclass(frozen=True)
class Session:
    """A loaded, normalised, converted and cross-checked model with its card, preprocessing and
    the run's images in canonical space (float32 C×H×W in [0, 1], METHOD §1)."""

    loaded: LoadedModel
    card: ModelCard
    normalised: NormalisedModel
    preprocessing: Preprocessing
    images: tuple[CanonicalImage, ...] = field(repr=False)
    layers: tuple[Layer, ...]  # the analysed layers, in graph order
    output: str | None  # the graph output holding class scores, when the run asked for it
    conversion: Conversion = field(repr=False)
    crosscheck: CrossCheck
    device: torch.device
    seconds: float  # to build it
    notes: tuple[str, ...] = ()  # e.g. why `auto` kept fewer layers than it asks for

    @property
    def module(self):
        """The converted module: canonical-free model-space input → {tensor name: feature}."""
        return self.conversion.module

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the canonical image."""
        return (
            self.images[0].pixels.shape
            if self.images
            else canonical_shape(tuple(self.normalised.input_shape), self.preprocessing.layout)
        )

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.preprocessing, self.shape[0])

    def pixels(self) -> torch.Tensor:
        """The images as one canonical batch (N, C, H, W) on the session's device."""
        return torch.from_numpy(np.stack([image.pixels for image in self.images])).to(self.device)

    def pipeline(self, layer: str) -> Pipeline:
        """h_l(P(x)) on the session's device: the differentiable function the solver perturbs."""
        return Pipeline(self.preprocess, self.module.only(layer), layer).to(self.device)

    def layer(self, name: str) -> Layer:
        return next(layer for layer in self.layers if layer.name == name)

    def portable(self) -> PortableSession:
        """What a worker needs to rebuild this session without the files: the model's bytes,
        the canonical images and every choice already resolved (layers, input, preprocessing)."""
        return PortableSession(
            path=self.loaded.path,
            sha256=self.loaded.sha256,
            model_bytes=self.loaded.proto.SerializeToString(),
            images=self.images,
            layers=tuple(layer.name for layer in self.layers),
            outputs=self.output is not None,
            preprocessing=self.preprocessing,
            input_name=self.normalised.input_name,
            input_shape=tuple(self.normalised.input_shape),
            tolerance=self.crosscheck.tolerance,
        )


@dataclass(frozen=True)
class PortableSession:
    """A `Session` in transit (picklable): `open(device)` rebuilds it on a worker."""

    path: Path
    sha256: str
    model_bytes: bytes = field(repr=False)
    images: tuple[CanonicalImage, ...] = field(repr=False)
    layers: tuple[str, ...]
    outputs: bool
    preprocessing: Preprocessing
    input_name: str
    input_shape: tuple[int, ...]
    tolerance: float

    def open(self, device: str = "auto") -> Session:
        import onnx

        loaded = LoadedModel(self.path, self.sha256, onnx.load_from_string(self.model_bytes))
        return open_session(
            self.path,
            layers=list(self.layers),
            outputs=self.outputs,
            preprocessing=self.preprocessing,
            input_name=self.input_name,
            input_shape=(1, *self.input_shape[1:]),
            device=device,
            tolerance=self.tolerance,
            loaded=loaded,
            canonical=self.images,
        )


def open_session(
    model: str | Path | None = None,
    images: Sequence[str | Path] | None = None,
    layers: Sequence[str] | None = None,
    *,
    outputs: bool = False,
    preprocessing: Preprocessing | None = None,
    preprocessing_overrides: dict | None = None,
    input_name: str | None = None,
    input_shape: Sequence[int] | None = None,
    device: str = "auto",
    tolerance: float = DEFAULT_RTOL,
    loaded: LoadedModel | None = None,
    canonical: Sequence[CanonicalImage] | None = None,
) -> Session:
    """Build the run's `Session`.

    With no model, the embedded default; with no images, the folder its card names; with no
    layers, the card's `suggested_layers`, else `auto`. Preprocessing: `preprocessing` as given,
    else the card with `preprocessing_overrides` (preset, scale, mean, std, layout, bgr) on top.
    With `outputs`, the graph's first output (class scores) is converted and cross-checked too.
    `loaded` and `canonical` skip reading the model and image files (a worker's `PortableSession`).
    Raises ConversionError when a tensor disagrees with onnxruntime.
    """
    start = time.perf_counter()
    overrides = {k: v for k, v in (preprocessing_overrides or {}).items() if v is not None}
    path = Path(model) if model is not None else default_model()
    torch_device = resolve_device(device)
    loaded = loaded or load_model(path)
    card = ModelCard.for_model(path, loaded.proto) if path.exists() else ModelCard.from_json({})
    input_name = input_name or card.get("input")
    requested = list(layers or card.get("suggested_layers") or ["auto"])
    shape = model_input_shape(loaded.proto, input_name, input_shape)
    preprocessing = preprocessing or resolve_preprocessing(card, shape, **overrides)
    if canonical is None:
        paths = list(images) if images else card_images(path, card)
        canonical = load_images(find_images(paths), canonical_shape(shape, preprocessing.layout))
    canonical = tuple(canonical)

    normalised = normalise(loaded.proto, input_name, input_shape)
    selected = choose_layers(normalised, requested)
    chosen = list(selected.layers)
    output, conversion, check = _convert(
        normalised, chosen, outputs, preprocessing, canonical[0], tolerance, torch_device
    )
    return Session(
        loaded,
        card,
        normalised,
        preprocessing,
        canonical,
        tuple(chosen),
        output,
        conversion,
        check,
        torch_device,
        time.perf_counter() - start,
        selected.notes,
    )


def _convert(normalised, chosen, outputs: bool, preprocessing, probe_image, tolerance: float, device: torch.device):
    """Convert the chosen layers (and, with `outputs`, the graph's first output) and cross-check
    them against onnxruntime on `probe_image`: (output name or None, conversion, check)."""
    output = normalised.proto.graph.output[0].name if outputs else None
    known = {layer.name for layer in chosen}
    converted = [*chosen, *(choose_layers(normalised, [output]).layers if output and output not in known else ())]
    with torch.no_grad():  # the first image is the cross-check's probe, in model space
        probe = Preprocess(preprocessing, probe_image.pixels.shape[0])(torch.from_numpy(probe_image.pixels[None]))
    conversion, check = convert_and_check(
        normalised,
        sorted(converted, key=lambda layer: layer.index),
        probe.numpy(),
        tolerance,
        device.type == "cuda",
    )
    return output, conversion, check


def model_input_shape(proto, input_name, input_shape) -> tuple[int, ...]:
    """The image input's dims (batch 1) before normalisation, to size the canonical image."""
    if input_shape is not None:
        return (1, *[int(v) for v in list(input_shape)[1:]])
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy = drop_unread_inputs(drop_initializer_inputs(copy)[0])[0]  # as normalise sees the inputs
    found = dims(image_input(copy, input_name))
    if any(not isinstance(d, int) or d <= 0 for d in found[1:]):
        raise InputError(
            f"the model's image input has dynamic dims {found}; give them as N,C,H,W", option="input_shape"
        )
    return (1, *found[1:])
