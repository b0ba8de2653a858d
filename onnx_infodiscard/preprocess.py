"""The model's own preprocessing, applied inside the differentiable function (METHOD §1).

Every analysis works on the canonical image: float32, C×H×W, values in [0, 1]. The model sees
`P(x)`: optional RGB->BGR, `x * scale`, `(x - mean) / std`, then its layout (NCHW or NHWC).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from .errors import InputError

CARD_SUFFIX = ".json"  # the card of MODEL.onnx is MODEL.onnx.json
METADATA_KEY = "infodiscard.card"

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
            raise InputError("--std has a zero; every channel's std must be non-zero")
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
        raise InputError(f"--{name} has {len(values)} values but the model takes {channels} channels; give 1 or {channels}")
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
    """The model card: `MODEL.onnx.json` beside the model, else the ONNX metadata_props entry."""
    sidecar = model_path.with_name(model_path.name + CARD_SUFFIX)
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{sidecar}: not valid JSON ({err}); fix or remove the model card") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError as err:
                raise InputError(f"{model_path}: metadata '{METADATA_KEY}' is not valid JSON ({err})") from None
    return {}


def resolve_preprocessing(
    card: dict,
    input_shape: tuple[int, ...],
    preset: str | None = None,
    scale: float | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    layout: Layout | None = None,
    bgr: bool | None = None,
) -> Preprocessing:
    """Card, then preset, then explicit flags: each later source overrides the earlier."""
    spec = Preprocessing(layout=guess_layout(input_shape), source="default (raw 0..1)")
    sources = []
    if card:
        fields = dict(card.get("preprocessing", {}))
        if "layout" in card:
            fields["layout"] = card["layout"]
        spec = _with_fields(spec, fields, "model card")
        sources.append("model card")
    if preset is not None:
        if preset not in PRESETS:
            from .errors import close_matches

            raise InputError(f"unknown preset '{preset}'{close_matches(preset, PRESETS)}")
        chosen = PRESETS[preset]
        spec = replace(spec, scale=chosen.scale, mean=chosen.mean, std=chosen.std)
        sources.append(f"preset {preset}")
    flags = {"scale": scale, "mean": mean, "std": std, "layout": layout, "bgr": bgr}
    flags = {key: value for key, value in flags.items() if value is not None}
    if flags:
        spec = _with_fields(spec, flags, "flags")
        sources.append("flags " + ",".join(flags))
    return replace(spec, source=" + ".join(sources) if sources else spec.source)


def _with_fields(spec: Preprocessing, fields: dict, where: str) -> Preprocessing:
    known = {"scale", "mean", "std", "layout", "bgr"}
    unknown = set(fields) - known
    if unknown:
        raise InputError(f"{where}: unknown preprocessing fields {sorted(unknown)}; use {sorted(known)}")
    values = dict(fields)
    for key in ("mean", "std"):
        if key in values:
            raw = values[key]
            values[key] = tuple(float(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw]))
    if "layout" in values:
        values["layout"] = str(values["layout"]).lower()
        if values["layout"] not in ("nchw", "nhwc"):
            raise InputError(f"{where}: layout '{values['layout']}' is neither nchw nor nhwc")
    if "scale" in values:
        values["scale"] = float(values["scale"])
    if "bgr" in values:
        values["bgr"] = bool(values["bgr"])
    return replace(spec, **values)
