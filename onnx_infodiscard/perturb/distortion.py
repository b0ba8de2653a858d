"""The normalised feature distortion D (METHOD §3), per perturbed input, for every row of a run."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError
from .noise import image_hash
from .settings import PRECISIONS

Feature = Callable[[torch.Tensor], torch.Tensor]


def autocast(device: torch.device, precision: str):
    """Autocast to the precision's dtype on `device`; fp32 is a no-op."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class Distortion:
    """D for each row: the normalised feature distortion of its layer under its σ map.

    `features[layer]` maps a canonical batch to that layer's feature; each runs only as deep as
    its layer, so rows of shallow layers cost little. With `memory_format="channels_last"` the
    Distortion converts its own copies of the modules; the caller's stay as they were.
    """

    def __init__(
        self,
        features: Mapping[str, Feature],
        images: torch.Tensor,
        image_of_row: Sequence[int],
        layer_of_row: Sequence[str],
        image_names: Sequence[str] | None = None,
        memory_format: str = "contiguous",
    ):
        self.channels_last = memory_format == "channels_last" and images.dim() == 4
        self._copies: dict = {}  # deepcopy memo: modules shared between features stay shared in the copies
        self.features = {name: self._own(feature) for name, feature in features.items()}
        self.images = images  # (n_images, C, H, W) canonical
        device = images.device
        self.layer_names = list(dict.fromkeys(layer_of_row))
        self.image_of_row = torch.as_tensor(list(image_of_row), device=device, dtype=torch.long)
        self.layer_of_row = torch.as_tensor([self.layer_names.index(n) for n in layer_of_row], device=device)
        self.image_hashes = [image_hash(image) for image in images]
        self.row_layers = list(layer_of_row)
        with torch.no_grad():
            self.clean = {name: self.features[name](self._layout(images)).float() for name in self.layer_names}
        scale = []
        for image, layer in zip(image_of_row, layer_of_row):
            reference = self.clean[layer][image]
            variance = float(reference.double().var(unbiased=False))
            if not variance > 0:
                shown = image_names[image] if image_names else f"#{image}"
                raise InputError(
                    f"layer '{layer}' is constant on image {shown} (zero variance, e.g. every ReLU off); "
                    "its distortion is undefined — choose another layer or check the preprocessing",
                    option="layers",
                )
            scale.append(reference.numel() * variance)
        self.scale = torch.tensor(scale, device=device)  # N·s² per row
        self._lower_precision: dict[str, torch.Tensor] = {}

    def _own(self, feature: Feature) -> Feature:
        """channels_last weights too, or every convolution would reorder them per call — on a copy."""
        if self.channels_last and isinstance(feature, nn.Module):
            return copy.deepcopy(feature, self._copies).to(memory_format=torch.channels_last)
        return feature

    def _layout(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    @property
    def rows(self) -> int:
        return len(self.image_of_row)

    def row_image_hash(self, row: int) -> str:
        return self.image_hashes[int(self.image_of_row[row])]

    def _clean(self, name: str, precision: str) -> torch.Tensor:
        """The clean feature computed at `precision`, so that rounding does not count as distortion."""
        if precision == "fp32":
            return self.clean[name]
        key = f"{name}\0{precision}"
        if key not in self._lower_precision:
            with torch.no_grad(), autocast(self.images.device, precision):
                self._lower_precision[key] = self.features[name](self._layout(self.images)).float()
        return self._lower_precision[key]

    def flat(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        precision: str = "fp32",
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D of each perturbed canonical input x (n, C, H, W) of row `rows` (n,) -> (n,).

        With `decoders` ({layer: g}), also the squared reconstruction error (g(h(P(x'))) − x)²
        of every input, (n, C, H, W): what reconstruction uncertainty (RU) is made of; else None.
        """
        images = self.image_of_row[rows]
        result = torch.empty(len(x), device=x.device, dtype=torch.float32)
        errors = torch.empty_like(x) if decoders is not None else None
        layers = self.layer_of_row[rows]
        for index in layers.unique().tolist():
            local = (layers == index).nonzero().squeeze(1)
            name = self.layer_names[index]
            with autocast(x.device, precision):
                feature = self.features[name](self._layout(x[local]))
            reference = self._clean(name, precision)[images[local]]
            result[local] = (feature.float() - reference).pow(2).flatten(1).sum(-1) / self.scale[rows[local]]
            if errors is not None:
                errors[local] = (decoders[name](feature.float()) - self.images[images[local]]).pow(2)
        return result, errors

    def _perturbed(self, log_sigma: torch.Tensor, rows: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        clean = self.images[self.image_of_row[rows]].unsqueeze(1)
        return (clean + torch.exp(log_sigma).unsqueeze(1) * noise).flatten(0, 1)

    def per_sample(
        self, log_sigma: torch.Tensor, rows: torch.Tensor, noise: torch.Tensor, precision: str = "fp32"
    ) -> torch.Tensor:
        """D of each (row, sample): log_sigma (r, 1, H, W), rows (r,), noise (r, K, C, H, W) -> (r, K)."""
        r, k = noise.shape[:2]
        flat_rows = rows.repeat_interleave(k)
        d, _ = self.flat(self._perturbed(log_sigma, rows, noise), flat_rows, precision)
        return d.view(r, k)

    def per_sample_with_errors(
        self,
        log_sigma: torch.Tensor,
        rows: torch.Tensor,
        noise: torch.Tensor,
        decoders: Mapping[str, nn.Module],
        precision: str = "fp32",
    ):
        """`per_sample` and the squared reconstruction errors (r, K, C, H, W) of the decoders' g_l."""
        r, k = noise.shape[:2]
        d, errors = self.flat(self._perturbed(log_sigma, rows, noise), rows.repeat_interleave(k), precision, decoders)
        return d.view(r, k), errors.view(noise.shape)


class Pipeline(nn.Module):
    """h_l(P(x)) for one layer: the preprocessing, then the converted module cut after that layer."""

    def __init__(self, preprocess: nn.Module, extractor: nn.Module, layer: str) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.extractor = extractor
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(self.preprocess(x))[self.layer]
