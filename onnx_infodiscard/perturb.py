"""The σ optimisation (METHOD §2–§4): the widest Gaussian input cloud whose features stay within τ.

One *row* is one (image, layer) pair with its own σ map. All rows are solved together, batched
on the device:

    maximise mean(log σ)  subject to  D(σ) = E_ε ‖h(P(x + σ⊙ε)) − h(P(x))‖² / (N·s²) = τ

Solver: start on the constraint with a uniform σ (secant steps, D ∝ σ²); Adam on log σ for the
Lagrangian D/τ − λ·mean(log σ) with dual ascent on log λ; Polyak-average the late iterates; then
project onto the constraint by a uniform shift of log σ and measure D/τ on fresh noise until its
standard error is at most 1 %.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

LOG_SIGMA_MIN = math.log(1e-6)
#: Variance of 8-bit quantisation, (1/255)²/12: reconstruction errors below it carry no information.
RECONSTRUCTION_FLOOR = (1 / 255) ** 2 / 12
#: Step of the dual ascent on log λ, per unit of relative constraint violation.
DUAL_RATE = 0.1
#: Autocast dtypes of the optimisation steps. Distortion, entropy, the solver state and the final
#: D/τ measurement stay in float32 whatever the precision, so the budget check is never approximate.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Layouts of 4-D activations. `auto` is channels_last on CUDA (cuDNN's native layout for
#: convolutions and tensor cores) and contiguous on the CPU, where channels_last was measured a
#: gain on some models and a loss on others (1.2–1.4× on the digits CNNs and SqueezeNet, 0.7× on ResNet-50).
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class SolverSettings:
    """Everything that decides the answer; identical τ for every layer and model (fairness)."""

    tau: float = 0.1
    steps: int = 100
    samples: int = 16  # noise samples per row per step
    lr: float = 0.1
    grid: int | None = None  # σ on a grid×grid lattice, upsampled by nearest neighbour
    sigma_max: float = 1.0
    tolerance: float = 0.05  # converged when |D/τ − 1| <= tolerance
    max_standard_error: float = 0.01  # of the final D/τ estimate, relative
    eval_samples: int = 64
    max_eval_samples: int = 4096
    max_batch: int = 256  # forward passes per chunk; halved on out-of-memory
    seed: int = 0
    precision: str = "fp32"  # of the model's forward/backward in the optimisation steps: fp32, bf16 or fp16
    memory_format: str = "auto"  # of 4-D activations: auto, contiguous or channels_last (same answers, other speed)

    def validate(self) -> None:
        if not self.tau > 0:
            raise InputError(f"--tau {self.tau}: the distortion budget must be > 0 (default 0.1)")
        if self.steps <= 0:
            raise InputError(f"--steps {self.steps}: give at least 1 optimisation step (default 100)")
        if self.samples <= 0 or self.eval_samples <= 0:
            raise InputError("--samples must be at least 1")
        if not self.sigma_max > 0:
            raise InputError(f"--sigma-max {self.sigma_max}: must be > 0 (default 1.0, the full pixel range)")
        if self.grid is not None and self.grid <= 0:
            raise InputError(f"--grid {self.grid}: give a positive grid size, e.g. 16")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise InputError(f"--memory-format {self.memory_format!r}: use {', '.join(MEMORY_FORMATS)}")

    def on(self, device: torch.device) -> SolverSettings:
        """These settings with `auto` choices made for `device`, as the report should record them."""
        if self.memory_format != "auto":
            return self
        return replace(self, memory_format="channels_last" if device.type == "cuda" else "contiguous")


@dataclass(frozen=True)
class Solution:
    """σ maps of every row at full input resolution, and how well each met the budget."""

    log_sigma: np.ndarray  # (rows, H, W), log of canonical units
    d_over_tau: np.ndarray  # (rows,), measured on fresh noise
    standard_error: np.ndarray  # (rows,), relative standard error of d_over_tau
    eval_samples: np.ndarray  # (rows,), noise samples behind d_over_tau
    multiplier: np.ndarray  # (rows,), final λ
    converged: np.ndarray  # (rows,) bool
    steps: int
    seconds: float
    max_batch: int  # after any out-of-memory halving


Feature = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")


class Distortion:
    """D for each row: the normalised feature distortion of its layer under its σ map.

    `features[layer]` maps a canonical batch to that layer's feature; each runs only as deep as
    its layer, so rows of shallow layers cost little.
    """

    def __init__(self, features: Mapping[str, Feature], images: torch.Tensor, image_of_row: Sequence[int],
                 layer_of_row: Sequence[str], image_names: Sequence[str] | None = None, memory_format: str = "contiguous"):
        self.channels_last = memory_format == "channels_last" and images.dim() == 4
        if self.channels_last:  # weights too, or every convolution would reorder them per call
            for feature in features.values():
                if isinstance(feature, nn.Module):
                    feature.to(memory_format=torch.channels_last)
        self.features = dict(features)
        self.images = images  # (n_images, C, H, W) canonical
        device = images.device
        self.layer_names = list(dict.fromkeys(layer_of_row))
        self.image_of_row = torch.as_tensor(list(image_of_row), device=device)
        self.layer_of_row = torch.as_tensor([self.layer_names.index(n) for n in layer_of_row], device=device)
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
                    "its distortion is undefined — choose another layer or check the preprocessing"
                )
            scale.append(reference.numel() * variance)
        self.scale = torch.tensor(scale, device=device)  # N·s² per row
        self._lower_precision: dict[str, torch.Tensor] = {}

    def _layout(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    @property
    def rows(self) -> int:
        return len(self.image_of_row)

    def _clean(self, name: str, precision: str) -> torch.Tensor:
        """The clean feature computed at `precision`, so that rounding does not count as distortion."""
        if precision == "fp32":
            return self.clean[name]
        key = f"{name}\0{precision}"
        if key not in self._lower_precision:
            with torch.no_grad(), _autocast(self.images.device, precision):
                self._lower_precision[key] = self.features[name](self._layout(self.images)).float()
        return self._lower_precision[key]

    def per_sample(self, log_sigma: torch.Tensor, rows: torch.Tensor, noise: torch.Tensor,
                   decoders: Mapping[str, nn.Module] | None = None, precision: str = "fp32"):
        """D of each (row, sample): log_sigma (r, 1, H, W), noise (r, K, C, H, W) -> (r, K).

        With `decoders` ({layer: g}), also the squared reconstruction error (g(h(P(x'))) − x)²
        of every sample, (r, K, C, H, W): what reconstruction uncertainty (RU) is made of.
        """
        r, k = noise.shape[:2]
        images = self.image_of_row[rows]
        clean = self.images[images].unsqueeze(1)
        x = clean + torch.exp(log_sigma).unsqueeze(1) * noise
        result = torch.empty((r, k), device=noise.device, dtype=torch.float32)
        errors = torch.empty_like(noise) if decoders is not None else None
        layers = self.layer_of_row[rows]
        for index in layers.unique().tolist():
            local = (layers == index).nonzero().squeeze(1)
            name = self.layer_names[index]
            with _autocast(x.device, precision):
                flat = self.features[name](self._layout(x[local].flatten(0, 1)))
            feature = flat.unflatten(0, (len(local), k)).float()
            reference = self._clean(name, precision)[images[local]].unsqueeze(1)
            result[local] = (feature - reference).pow(2).flatten(2).sum(-1) / self.scale[rows[local]].unsqueeze(1)
            if errors is not None:
                reconstruction = decoders[name](flat.float()).unflatten(0, (len(local), k))
                errors[local] = (reconstruction - clean[local]).pow(2)
        return result if errors is None else (result, errors)


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class Solver:
    """Solves every row of a `Distortion` under `SolverSettings`, chunked to fit the device."""

    def __init__(self, distortion: Distortion, settings: SolverSettings, progress: Callable[[int], None] | None = None,
                 decoders: Mapping[str, nn.Module] | None = None):
        settings.validate()
        self.d = distortion
        self.decoders = decoders  # None: maximise the input entropy (CID); else the reconstruction's (RU)
        self.s = settings
        self.progress = progress or (lambda advance: None)
        images = distortion.images
        self.device = images.device
        self.channels, self.height, self.width = images.shape[1:]
        grid = settings.grid
        self.lattice = (min(grid, self.height), min(grid, self.width)) if grid else (self.height, self.width)
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self.max_batch = settings.max_batch
        self.rows = torch.arange(distortion.rows, device=self.device)

    # -- public ---------------------------------------------------------------------------------

    def solve(self) -> Solution:
        start = time.perf_counter()
        s = self.s
        theta = self._retrying(self._initial_log_sigma)
        theta.requires_grad_(True)
        log_multiplier = torch.full((self.d.rows,), math.log(2.0), device=self.device)
        optimiser = torch.optim.Adam([theta], lr=s.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=s.steps, eta_min=s.lr / 10)
        average, averaged = torch.zeros_like(theta), 0
        for step in range(s.steps):
            multiplier = log_multiplier.exp()
            ratio = self._retrying(lambda: self._accumulate_gradient(theta, multiplier))
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                theta.clamp_(LOG_SIGMA_MIN, math.log(s.sigma_max))
                log_multiplier -= DUAL_RATE * (ratio - 1.0).clamp(-1.0, 1.0)
                if step >= s.steps // 2:
                    average += theta
                    averaged += 1
            self.progress(1)
        theta = (average / max(averaged, 1)).detach()
        theta, d_over_tau, se, n = self._retrying(lambda: self._project_and_measure(theta.clone()))
        converged = (np.abs(d_over_tau - 1) <= s.tolerance) & (se <= s.max_standard_error)
        return Solution(
            log_sigma=self._full_resolution(theta).squeeze(1).cpu().numpy(),
            d_over_tau=d_over_tau,
            standard_error=se,
            eval_samples=n,
            multiplier=log_multiplier.exp().cpu().numpy(),
            converged=converged,
            steps=s.steps,
            seconds=time.perf_counter() - start,
            max_batch=self.max_batch,
        )

    # -- steps ----------------------------------------------------------------------------------

    def _initial_log_sigma(self) -> torch.Tensor:
        """A uniform σ on the constraint: secant steps using D ∝ σ²."""
        level = torch.full((self.d.rows,), math.log(0.1 * self.s.sigma_max), device=self.device)
        for _ in range(4):
            theta = level.view(-1, 1, 1, 1).expand(-1, 1, *self.lattice)
            ratio = self._samples_ratio(theta, self.s.samples, self.rows).mean(1)
            level = (level - 0.5 * torch.log(ratio.clamp_min(1e-12))).clamp(LOG_SIGMA_MIN, math.log(self.s.sigma_max))
        return level.view(-1, 1, 1, 1).expand(-1, 1, *self.lattice).clone()

    def _accumulate_gradient(self, theta: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        """Backward of Σ_rows D/τ − λ·gain, chunk by chunk; returns each row's D/τ (detached).

        gain = mean(log σ) for CID; for RU the mean of ½ log E_ε[(g(h(P(x'))) − x)²].
        """
        theta.grad = None  # a stage redone after an out-of-memory starts clean
        ratios = torch.empty(self.d.rows, device=self.device)
        for rows in self._chunks(self.s.samples):
            noise = self._noise(len(rows), self.s.samples)
            log_sigma = self._full_resolution(theta[rows])
            if self.decoders is None:
                d = self.d.per_sample(log_sigma, rows, noise, precision=self.s.precision).mean(1)
                gain = log_sigma.flatten(1).mean(1)
            else:
                d, errors = self.d.per_sample(log_sigma, rows, noise, self.decoders, self.s.precision)
                d = d.mean(1)
                gain = 0.5 * torch.log(errors.mean(1) + RECONSTRUCTION_FLOOR).flatten(1).mean(1)
            loss = (d / self.s.tau).sum() - (multiplier[rows] * gain).sum()
            loss.backward()
            ratios[rows] = d.detach() / self.s.tau
        return ratios

    def reconstruction_error(self, log_sigma: np.ndarray, samples: int) -> np.ndarray:
        """E_ε[(g(h(P(x'))) − x)²] per row, channel and pixel at the solved σ, (rows, C, H, W)."""
        theta = torch.as_tensor(log_sigma, device=self.device).unsqueeze(1)

        def mean_error() -> torch.Tensor:
            total = torch.zeros((self.d.rows, self.channels, self.height, self.width), device=self.device)
            with torch.no_grad():
                for start in range(0, samples, self.s.samples):
                    block = min(self.s.samples, samples - start)
                    for rows in self._chunks(block):
                        noise = self._noise(len(rows), block)
                        _, errors = self.d.per_sample(theta[rows], rows, noise, self.decoders)
                        total[rows] += errors.sum(1)
            return total / samples

        return self._retrying(mean_error).cpu().numpy()

    def _project_and_measure(self, theta: torch.Tensor):
        """Shift log σ uniformly onto D = τ, then measure D/τ on fresh noise to 1 % standard error.

        A cheap pilot sample places the shift (D ∝ σ²); rows that the precise measurement finds
        off the budget by more than their own noise shift once more and are measured again.
        """
        theta = self._shift(theta, self._samples_ratio(theta, self.s.eval_samples, self.rows).mean(1))
        ratio, se, n = self._measure(theta, self.rows)
        for _ in range(4):
            off = (ratio - 1).abs() > torch.clamp(2 * se, min=self.s.tolerance / 5)
            if not bool(off.any()):
                break
            rows = self.rows[off]
            theta[rows] = self._shift(theta[rows], ratio[off])
            ratio[off], se[off], n[off] = self._measure(theta, rows)
        return theta, ratio.cpu().numpy(), se.cpu().numpy(), n.cpu().numpy()

    def _shift(self, theta: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Scale σ by sqrt(1/ratio); positions already at σ_max stay there (fully discarded)."""
        top = math.log(self.s.sigma_max)
        shift = -0.5 * torch.log(ratio.clamp_min(1e-12)).to(theta.dtype).view(-1, 1, 1, 1)
        return torch.where(theta >= top - 1e-6, theta, theta + shift).clamp(LOG_SIGMA_MIN, top)

    def _measure(self, theta: torch.Tensor, rows: torch.Tensor):
        """D/τ of `rows` on fresh noise, each with enough samples for a relative standard error <= 1 %.

        A pilot of `eval_samples` gives each row's coefficient of variation, hence the samples it
        needs; deep layers need hundreds, since one sample's distortion can vary by 30 %.
        """
        count = torch.zeros(len(rows), dtype=torch.float64, device=self.device)
        total, squares = torch.zeros_like(count), torch.zeros_like(count)
        active, samples = torch.arange(len(rows), device=self.device), self.s.eval_samples
        while len(active):
            values = self._samples_ratio(theta, samples, rows[active]).double()
            count[active] += samples
            total[active] += values.sum(1)
            squares[active] += values.pow(2).sum(1)
            mean = total / count
            variance = (squares / count - mean**2).clamp_min(0) * count / (count - 1).clamp_min(1)
            se = (variance / count).sqrt() / mean.clamp_min(1e-12)
            needed = (count * (se / self.s.max_standard_error) ** 2 * 1.1).ceil().clamp(max=self.s.max_eval_samples)
            active = ((se > self.s.max_standard_error) & (count < self.s.max_eval_samples)).nonzero().squeeze(1)
            if len(active):
                samples = int((needed[active] - count[active]).max().clamp(min=count[active].min()))
                samples = min(samples, self.s.max_eval_samples - int(count[active].max()))
        return mean.float(), se.float(), count.long()

    # -- plumbing -------------------------------------------------------------------------------

    def _samples_ratio(self, theta: torch.Tensor, samples: int, rows: torch.Tensor) -> torch.Tensor:
        """D/τ of `samples` fresh noise draws for each of `rows`, (len(rows), samples); no autograd."""
        batch = self.max_batch * 4  # without activations kept, chunks can be larger than in training
        blocks = []
        with torch.no_grad():
            for start in range(0, samples, batch):
                block = min(batch, samples - start)
                out = torch.empty((len(rows), block), device=self.device)
                for local in self._chunks(block, batch, len(rows)):
                    chunk = rows[local]
                    noise = self._noise(len(chunk), block)
                    log_sigma = self._full_resolution(theta[chunk])
                    out[local] = self.d.per_sample(log_sigma, chunk, noise) / self.s.tau
                blocks.append(out)
        return torch.cat(blocks, dim=1)

    def _full_resolution(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape[-2:] == (self.height, self.width):
            return theta
        return F.interpolate(theta, size=(self.height, self.width), mode="nearest")

    def _noise(self, rows: int, samples: int) -> torch.Tensor:
        shape = (rows, samples, self.channels, self.height, self.width)
        return torch.randn(shape, generator=self.generator, device=self.device)

    def _chunks(self, samples: int, batch: int | None = None, count: int | None = None) -> list[torch.Tensor]:
        """Index ranges over `count` rows (default all) so that rows × samples fits one batch."""
        count = self.d.rows if count is None else count
        per_chunk = max(1, (batch or self.max_batch) // samples)
        return [self.rows[i : min(i + per_chunk, count)] for i in range(0, count, per_chunk)]

    def _retrying(self, stage: Callable[[], T]) -> T:
        """Run one stage (the start, a step, the measurement); on device out-of-memory halve the
        batch for the rest of the solve and run that stage again, keeping the work already done."""
        while True:
            try:
                return stage()
            except torch.OutOfMemoryError:
                if self.max_batch <= 1:
                    raise InputError("out of device memory even at one sample per batch; use a smaller input or --device cpu") from None
                self.max_batch //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def solve(distortion: Distortion, settings: SolverSettings, progress: Callable[[int], None] | None = None,
          decoders: Mapping[str, nn.Module] | None = None, reconstruction_samples: int = 0):
    """Solve every row; an out-of-memory halves the batch and the solve goes on (the report says so).

    With `decoders`, the RU objective; `reconstruction_samples` > 0 also returns E[(g − x)²] maps.
    """
    solver = Solver(distortion, settings, progress, decoders)
    solution = solver.solve()
    if not reconstruction_samples:
        return solution
    return solution, solver.reconstruction_error(solution.log_sigma, reconstruction_samples)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when torch sees a GPU, else CPU; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); use --device cpu or auto")
        return torch.device(name)
    raise InputError(f"--device {name!r}: use auto, cpu or cuda")


class Pipeline(nn.Module):
    """h_l(P(x)) for one layer: the preprocessing, then the converted module cut after that layer."""

    def __init__(self, preprocess: nn.Module, extractor: nn.Module, layer: str) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.extractor = extractor
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(self.preprocess(x))[self.layer]
