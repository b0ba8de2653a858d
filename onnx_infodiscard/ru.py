"""Reconstruction uncertainty (METHOD §5): per-layer decoders g_l, trained once and cached.

RU asks how much of the input a layer's feature still lets one reconstruct: the entropy of the
reconstructions g_l(h_l(P(x'))) from every x' inside the same distortion budget as CID.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError

MIN_TRAIN_IMAGES = 10  # fewer leave no meaningful held-out split
CACHE_ENV = "INFODISCARD_CACHE"


@dataclass(frozen=True)
class DecoderConfig:
    """Everything that decides a decoder; part of its cache key."""

    architecture: int = 3  # bumped whenever decoder_for changes, so old cache entries are not reused
    width: int = 32
    epochs: int = 60
    batch: int = 32
    lr: float = 3e-3
    held_out: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class TrainedDecoder:
    """A decoder for one layer and how well it reconstructs images it never saw."""

    layer: str
    module: nn.Module
    held_out_mse: float  # canonical units², images in [0, 1]
    held_out_psnr: float  # dB, peak 1
    cache_file: Path
    from_cache: bool


class Standardise(nn.Module):
    """Features scaled per channel to zero mean, unit variance on the training set: deep layers'
    large activations would otherwise saturate the decoder from its first step."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        dims = [0, 2, 3] if features.dim() == 4 else [0]
        self.register_buffer("mean", features.mean(dims, keepdim=True)[0])
        self.register_buffer("std", features.std(dims, keepdim=True)[0].clamp_min(1e-6))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return (feature - self.mean) / self.std


def decoder_for(features: torch.Tensor, image_shape: Sequence[int], width: int) -> nn.Module:
    """Spatial features (N, c, h, w) -> an upsampling conv decoder; anything else -> an MLP."""
    return nn.Sequential(Standardise(features), _decoder_body(features.shape[1:], image_shape, width))


def _decoder_body(feature_shape: Sequence[int], image_shape: Sequence[int], width: int) -> nn.Module:
    channels, height, width_px = image_shape
    if len(feature_shape) == 3:
        c, h, _ = feature_shape
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        size = h
        while size * 2 <= height:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
            size *= 2
        layers += [
            nn.Upsample(size=(height, width_px), mode="bilinear"),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        ]
        return nn.Sequential(*layers)
    size = math.prod(feature_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(size, 256),
        nn.ReLU(),
        nn.Linear(256, channels * height * width_px),
        nn.Sigmoid(),
        nn.Unflatten(1, (channels, height, width_px)),
    )


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "onnx-infodiscard")) / "decoders"


def check_cache_dir() -> Path:
    """The decoder cache, checked writable before any work: training takes minutes, and a run that
    could not store its decoders would fail only after them."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise InputError(
            f"the decoder cache {folder} is not a writable folder ({err.strerror or err}); point {CACHE_ENV} at one"
        ) from None
    return folder


def images_hash(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()[:16]


def decoder_key(model_sha256: str, layer: str, config: DecoderConfig, train_hash: str, feature_shape) -> str:
    text = json.dumps([model_sha256, layer, asdict(config), train_hash, list(feature_shape)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def trained_decoder(
    feature: Callable[[torch.Tensor], torch.Tensor],
    layer: str,
    train_images: np.ndarray,
    model_sha256: str,
    config: DecoderConfig = DecoderConfig(),
    retrain: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device = torch.device("cpu"),
) -> TrainedDecoder:
    """The cached decoder for `layer`, or a new one trained on `train_images` (N, C, H, W) in [0, 1]."""
    if len(train_images) < MIN_TRAIN_IMAGES:
        raise InputError(
            f"{len(train_images)} training images are too few for a held-out split; give at least {MIN_TRAIN_IMAGES}",
            option="train_images",
        )
    images = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32)).to(device)
    with torch.no_grad():
        features = torch.cat([feature(chunk).float() for chunk in images.split(64)])
    key = decoder_key(model_sha256, layer, config, images_hash(train_images), features.shape[1:])
    path = cache_dir() / f"{key}.safetensors"
    module = decoder_for(features, images.shape[1:], config.width).to(device)
    if path.is_file() and not retrain:
        cached = _load(path, module)
        if cached is not None:
            return TrainedDecoder(layer, module.eval().requires_grad_(False), *cached, path, True)
    mse = _train(module, features, images, config, progress)
    _save(path, module, mse)
    return TrainedDecoder(layer, module.eval().requires_grad_(False), mse, _psnr(mse), path, False)


def _train(module: nn.Module, features: torch.Tensor, images: torch.Tensor, config: DecoderConfig, progress) -> float:
    """Adam on MSE over the training split; returns the held-out MSE."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(images), generator=generator).to(images.device)
    held = max(2, int(round(config.held_out * len(images))))
    test, train = order[:held], order[held:]
    _initialise(module, torch.Generator().manual_seed(config.seed))
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr)
    module.train()
    for _epoch in range(config.epochs):
        shuffled = train[torch.randperm(len(train), generator=generator).to(images.device)]
        for batch in shuffled.split(config.batch):
            optimiser.zero_grad()
            loss = (module(features[batch]) - images[batch]).pow(2).mean()
            loss.backward()
            optimiser.step()
        if progress:
            progress(1, config.epochs)
    module.eval()
    with torch.no_grad():
        return float((module(features[test]) - images[test]).pow(2).mean())


def _initialise(module: nn.Module, generator: torch.Generator) -> None:
    """Deterministic start whatever ran before, from `generator` (never the global one): torch's
    default Kaiming-uniform for weights (a = √5) and biases uniform in ±1/√fan_in."""
    with torch.no_grad():
        for layer in module.modules():
            weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
                continue
            fan_in = weight[0].numel()
            bound = math.sqrt(6 / ((1 + 5) * fan_in))  # gain √(2/(1+a²)) with a = √5, times √(3/fan_in)
            weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)
            if isinstance(bias, torch.Tensor):
                limit = 1 / math.sqrt(fan_in)
                bias.copy_(torch.rand(bias.shape, generator=generator) * 2 * limit - limit)


def _psnr(mse: float) -> float:
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def _save(path: Path, module: nn.Module, mse: float) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp), metadata={"held_out_mse": repr(mse)})
        os.replace(tmp, path)
    except OSError as err:  # the folder went away or filled up during training
        raise InputError(
            f"cannot write the decoder cache {path} ({err.strerror or err}); point {CACHE_ENV} at a writable folder"
        ) from None


def _load(path: Path, module: nn.Module) -> tuple[float, float] | None:
    """Weights and held-out error from the cache; a corrupt file is reported and rebuilt (None)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            mse = float(handle.metadata()["held_out_mse"])
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        module.load_state_dict(state)
    except Exception as err:  # truncated, not safetensors, wrong tensors: retrain rather than fail
        warnings.warn(f"decoder cache {path} is unreadable ({type(err).__name__}); retraining it", stacklevel=2)
        return None
    return mse, _psnr(mse)
