"""The model's own preprocessing, applied inside the differentiable function (METHOD §1).

Every analysis works on the canonical image: float32, C×H×W, values in [0, 1]. The model sees
`P(x)`: optional RGB->BGR, `x * scale`, `(x - mean) / std`, then its layout (NCHW or NHWC).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from .card import CARD_SUFFIX, METADATA_KEY, ModelCard
from .errors import InputError, close_matches

__all__ = [
    "CARD_SUFFIX",
    "METADATA_KEY",
    "PRESETS",
    "Preprocess",
    "Preprocessing",
    "canonical_shape",
    "guess_layout",
    "read_card",
    "resolve_preprocessing",
]

Layout = Literal["nchw", "nhwc"]


@dataclass(frozen=True)
class Preprocessing:
    """How a canonical [0, 1] image becomes the model's input, and where that was read from."""

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = "nchw"
    bgr: bool = False
    source: str = "default"

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preprocessing] = {
    "imagenet": Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), source="preset imagenet"),
    "tf": Preprocessing(scale=2.0, mean=(1.0,), std=(1.0,), source="preset tf (-1..1)"),
    "raw01": Preprocessing(source="preset raw01"),
    "raw255": Preprocessing(scale=255.0, source="preset raw255"),
}


class Preprocess(nn.Module):
    """`P`: canonical (B, C, H, W) in [0, 1] -> the model's input tensor."""

    def __init__(self, spec: Preprocessing, channels: int) -> None:
        super().__init__()
        self.spec = spec
        mean = _per_channel(spec.mean, channels, "mean")
        std = _per_channel(spec.std, channels, "std")
        if any(s == 0 for s in std):
            raise InputError("has a zero; every channel's std must be non-zero", option="std")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.bgr:
            x = x.flip(1)
        x = (x * self.spec.scale - self.mean) / self.std
        return x.permute(0, 2, 3, 1) if self.spec.layout == "nhwc" else x


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> list[float]:
    if len(values) == 1:
        return list(values) * channels
    if len(values) != channels:
        raise InputError(
            f"{len(values)} values but the model takes {channels} channels; give 1 or {channels}", option=name
        )
    return list(values)


def guess_layout(input_shape: tuple[int, ...]) -> Layout:
    """NHWC when the last dim looks like channels (1, 3 or 4) and dim 1 does not."""
    return "nhwc" if input_shape[-1] in (1, 3, 4) and input_shape[1] not in (1, 3, 4) else "nchw"


def canonical_shape(input_shape: tuple[int, ...], layout: Layout) -> tuple[int, int, int]:
    """(C, H, W) of the canonical image for a model input of `input_shape` (batch first)."""
    if layout == "nhwc":
        return input_shape[3], input_shape[1], input_shape[2]
    return input_shape[1], input_shape[2], input_shape[3]


def read_card(model_path: Path, model: onnx.ModelProto) -> dict:
    """The validated model card as JSON (see `ModelCard.for_model`, which also keeps its origin)."""
    return ModelCard.for_model(model_path, model).to_json()


def resolve_preprocessing(
    card: ModelCard | dict,
    input_shape: tuple[int, ...],
    preset: str | None = None,
    scale: float | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    layout: Layout | None = None,
    bgr: bool | None = None,
) -> Preprocessing:
    """Card (its preset, then its fields), then preset, then explicit flags: each later source
    overrides the earlier."""
    card = card if isinstance(card, ModelCard) else ModelCard.from_json(card or {})
    spec = Preprocessing(layout=guess_layout(input_shape), source="default (raw 0..1)")
    sources = []
    if not card.is_empty():
        given = card.preprocessing
        if given.preset is not None:
            spec = _with_preset(spec, given.preset)
        fields = {"scale": given.scale, "mean": given.mean, "std": given.std, "bgr": given.bgr, "layout": card.layout}
        spec = replace(spec, **{key: value for key, value in fields.items() if value is not None})
        sources.append("model card")
    if preset is not None:
        spec = _with_preset(spec, preset)
        sources.append(f"preset {preset}")
    flags = {"scale": scale, "mean": mean, "std": std, "layout": layout, "bgr": bgr}
    flags = {key: value for key, value in flags.items() if value is not None}
    if flags:
        spec = _with_flags(spec, flags)
        sources.append("flags " + ",".join(flags))
    return replace(spec, source=" + ".join(sources) if sources else spec.source)


def _with_preset(spec: Preprocessing, preset: str) -> Preprocessing:
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}'{close_matches(preset, PRESETS)}", option="preset")
    chosen = PRESETS[preset]
    return replace(spec, scale=chosen.scale, mean=chosen.mean, std=chosen.std)


def _with_flags(spec: Preprocessing, flags: dict) -> Preprocessing:
    """Explicit values (library arguments, CLI flags), each checked finite and in range."""
    values = dict(flags)
    for key in ("mean", "std"):
        if key in values:
            raw = values[key]
            values[key] = tuple(float(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw]))
            if not values[key] or not all(math.isfinite(v) for v in values[key]):
                raise InputError(f"{values[key]} must be finite numbers", option=key)
    if "std" in values and any(v <= 0 for v in values["std"]):
        raise InputError(f"{values['std']}: every channel's std must be > 0", option="std")
    if "scale" in values:
        values["scale"] = float(values["scale"])
        if not math.isfinite(values["scale"]) or values["scale"] <= 0:
            raise InputError(
                f"{values['scale']} must be a finite number > 0 (255 for raw 0..255 pixels)", option="scale"
            )
    if "layout" in values:
        values["layout"] = str(values["layout"]).lower()
        if values["layout"] not in ("nchw", "nhwc"):
            raise InputError(f"'{values['layout']}' is neither nchw nor nhwc", option="layout")
    if "bgr" in values:
        values["bgr"] = bool(values["bgr"])
    return replace(spec, **values)
