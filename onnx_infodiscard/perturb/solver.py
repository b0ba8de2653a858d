"""The σ optimisation (METHOD §2–§4): the widest Gaussian input cloud whose features stay within τ.

One *row* is one (image, layer) pair with its own σ map. Rows are solved together, batched on the
device, but every decision about a row depends on that row alone: its noise (row-local streams,
see `noise`), its Adam state and learning rate, its multiplier, its sample counts and shifts. So a
row's answer is the same alone or with any other rows, in any order and chunking.

    maximise mean(log σ)  subject to  D(σ) = E_ε ‖h(P(x + σ⊙ε)) − h(P(x))‖² / (N·s²) = τ

Solver: start on the constraint with a uniform σ (secant steps, D ∝ σ²); Adam on log σ for the
Lagrangian D/τ − λ·mean(log σ) with dual ascent on log λ; Polyak-average the late iterates; then
project onto the constraint by a uniform shift of log σ, found by a bracketed secant search on a
fixed noise sample, and measure D/τ on fresh noise until its standard error is at most 1 %. Rows
that still miss the budget get more steps (at most `extra_steps`), and are projected again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .distortion import Distortion
from .memory import estimate, peak_memory
from .noise import NOISE_BLOCK, pack, row_noise, seed_of_hash
from .project import Projector
from .settings import DUAL_RATE, LOG_SIGMA_MIN, RECONSTRUCTION_FLOOR, Solution, SolverSettings

T = TypeVar("T")
#: Draw counters: the first number of every draw, so no two stages of a row share noise.
INIT, STEP, RECONSTRUCTION = 1, 2, 5
BETAS, EPS = (0.9, 0.999), 1e-8


class Solver:
    """Solves every row of a `Distortion` under `SolverSettings`, chunked to fit the memory budget.

    Internally a row is solved as `replicates` units (two with `settings.reliability`), each with
    its own noise stream and half the samples; the row's map is their mean.
    """

    def __init__(
        self,
        distortion: Distortion,
        settings: SolverSettings,
        progress: Callable[[int], None] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ):
        settings.validate()
        self.d, self.s, self.decoders = distortion, settings, decoders
        self.progress = progress or (lambda advance: None)
        self.device = distortion.images.device
        self.shape = tuple(distortion.images.shape[1:])
        _, self.height, self.width = self.shape
        grid = settings.grid
        self.lattice = (min(grid, self.height), min(grid, self.width)) if grid else (self.height, self.width)
        self.replicates = 2 if settings.reliability and settings.samples >= 2 else 1
        self.samples = max(1, settings.samples // self.replicates)
        self.seeds = [
            seed_of_hash(settings.seed, distortion.row_image_hash(r), distortion.row_layers[r])
            for r in range(distortion.rows)
        ]
        self.unit_row = torch.arange(distortion.rows, device=self.device).repeat_interleave(self.replicates)
        self.estimate = estimate(distortion, settings, decoders)
        self.max_batch, self.eval_batch = self.estimate.batch, self.estimate.eval_batch
        self.halvings = 0

    # -- public ---------------------------------------------------------------------------------

    def solve(self) -> Solution:
        start = time.perf_counter()
        s, units = self.s, len(self.unit_row)
        theta = self.retrying(lambda: self._initial_log_sigma(torch.arange(units, device=self.device)))
        self.state = _State(theta, s)
        every = torch.arange(units, device=self.device)
        for _ in range(s.steps):
            self._step(every)
            self.progress(1)
        rows = torch.arange(self.d.rows, device=self.device)
        projector = Projector(self, rows)
        theta_rows = self._combined(rows)
        result = projector.run(theta_rows, rows)
        extra = torch.zeros(self.d.rows, dtype=torch.long, device=self.device)
        top = math.log(s.sigma_max)
        while s.extra_steps and int(extra.max()) < s.extra_steps:
            theta, ratio = result[0], result[1]
            # A row saturated everywhere below the budget discards all it can: more steps cannot help.
            stuck = (theta.flatten(1) >= top - 1e-6).all(1) & (ratio < 1)
            missed = rows[~projector.converged(result) & ~stuck]
            if not len(missed):
                break
            block = min(max(s.steps // 2, 1), s.extra_steps - int(extra.max()))
            mine = torch.nonzero(torch.isin(self.unit_row, missed)).squeeze(1)
            self.state.restart_average(mine, block)
            for _ in range(block):
                self._step(mine)
            extra[missed] += block
            result = projector.update(result, self._combined(missed), missed)
        return self._solution(result, extra, start)

    def _solution(self, result, extra, start) -> Solution:
        theta, ratio, se, n = result
        s = self.s
        converged = (torch.abs(ratio - 1) <= s.tolerance) & (se <= s.max_standard_error)
        multiplier = self.state.log_multiplier.exp().view(self.d.rows, self.replicates).mean(1)
        return Solution(
            log_sigma=self.full_resolution(theta).squeeze(1).cpu().numpy(),
            d_over_tau=ratio.cpu().numpy(),
            standard_error=se.cpu().numpy(),
            eval_samples=n.cpu().numpy(),
            multiplier=multiplier.cpu().numpy(),
            converged=converged.cpu().numpy(),
            steps=s.steps,
            seconds=time.perf_counter() - start,
            max_batch=self.max_batch,
            extra_steps=extra.cpu().numpy(),
            reliability=self._reliability() if self.replicates == 2 else None,
            peak_memory=peak_memory(self.device),
            memory_budget=self.estimate.budget,
            estimate=self.estimate,
            halvings=self.halvings,
        )

    def _combined(self, rows: torch.Tensor) -> torch.Tensor:
        """Each row's map: the mean of its replicates' averaged iterates, (len(rows), 1, h, w)."""
        average = self.state.averaged_theta().view(self.d.rows, self.replicates, 1, *self.lattice)
        return average[rows].mean(1)

    def _reliability(self) -> np.ndarray:
        """Spearman–Brown-corrected Pearson correlation 2r/(1+r) of the two replicates' log σ maps.

        The two replicates of a row are solved independently (own noise streams, half the samples
        each) and their averaged iterates compared before the projection; the correction predicts
        the correlation of two estimates at the full budget, i.e. the share of the reported map's
        variation across pixels that is not Monte Carlo noise (its square root estimates the map's
        correlation with the exact optimum). A map with no true variation (the identity layer's
        uniform optimum) scores near 0: there is no structure to reproduce. 1 for two equal maps.
        """
        average = self.full_resolution(self.state.averaged_theta()).view(self.d.rows, 2, -1).double()
        centred = average - average.mean(-1, keepdim=True)
        a, b = centred[:, 0], centred[:, 1]
        denominator = (a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt()
        r = (a * b).sum(-1) / denominator.clamp_min(1e-300)
        r = torch.where(denominator > 1e-12, r, torch.ones_like(denominator))
        return (2 * r / (1 + r).clamp_min(1e-12)).clamp(-1, 1).cpu().numpy()

    # -- steps ----------------------------------------------------------------------------------

    def _initial_log_sigma(self, units: torch.Tensor) -> torch.Tensor:
        """A uniform σ on the constraint: secant steps using D ∝ σ²."""
        top = math.log(self.s.sigma_max)
        level = torch.full((len(units),), math.log(0.1 * self.s.sigma_max), device=self.device)
        for i in range(4):
            theta = level.view(-1, 1, 1, 1).expand(-1, 1, *self.lattice)
            requests = [(j, (INIT, self._replicate(u), i), self.samples) for j, u in enumerate(units)]
            ratio = self._ratios(theta, requests, units)
            level = (level - 0.5 * torch.log(ratio.clamp_min(1e-12))).clamp(LOG_SIGMA_MIN, top)
        return level.view(-1, 1, 1, 1).expand(-1, 1, *self.lattice).clone()

    def _replicate(self, unit) -> int:
        return int(unit) % self.replicates

    def _step(self, units: torch.Tensor) -> None:
        """One Adam step of the Lagrangian for `units`, each at its own step count."""
        state = self.state
        theta = state.theta
        ratio = self.retrying(lambda: self._accumulate_gradient(theta, units, state.log_multiplier[units].exp()))
        with torch.no_grad():
            state.adam(units, theta.grad[units], self._learning_rates(state.count[units]))
            state.log_multiplier[units] -= DUAL_RATE * (ratio - 1.0).clamp(-1.0, 1.0)
            state.accumulate(units)
        theta.grad = None

    def _learning_rates(self, count: torch.Tensor) -> torch.Tensor:
        """Cosine annealing from lr to lr/10 over the schedule; extra steps stay at lr/10."""
        s = self.s
        phase = (count.double().clamp(max=s.steps) / s.steps * math.pi).cos()
        return (s.lr / 10 + (s.lr - s.lr / 10) * (1 + phase) / 2).float()

    def _accumulate_gradient(self, theta: torch.Tensor, units: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        """Backward of Σ_units D/τ − λ·gain, chunk by chunk; returns each unit's D/τ (detached).

        gain = mean(log σ) for CID; for RU the mean of ½ log E_ε[(g(h(P(x'))) − x)²], which needs a
        unit's samples in one chunk.
        """
        theta.grad = None  # a stage redone after an out-of-memory starts clean
        k, tau = self.samples, self.s.tau
        requests = [(i, (STEP, self._replicate(u), int(self.state.count[u])), k) for i, u in enumerate(units)]
        ratios = torch.zeros(len(units), device=self.device)
        for chunk in pack(requests, self.max_batch, split=self.decoders is None):
            index = torch.tensor([p.row for p in chunk], device=self.device)
            x, rows, owners = self._perturbed(theta[units[index]], units[index], chunk)
            d, errors = self.d.flat(x, rows, self.s.precision, self.decoders)
            loss = d.sum() / (k * tau)
            if errors is not None:  # whole draws: one piece per unit
                gains = torch.stack(
                    [
                        0.5 * torch.log(e.mean(0) + RECONSTRUCTION_FLOOR).mean()
                        for e in errors.split([p.count for p in chunk])
                    ]
                )
                loss = loss - (multiplier[index] * gains).sum()
            loss.backward()
            ratios.index_add_(0, index[owners], d.detach() / (k * tau))
        if self.decoders is None:
            gain = self.full_resolution(theta[units]).flatten(1).mean(1)
            (-(multiplier * gain).sum()).backward()
        return ratios

    def _perturbed(self, maps: torch.Tensor, units: torch.Tensor, chunk):
        """x' = x + σ⊙ε for every piece of `chunk` (maps[i], units[i] those of chunk[i]): the inputs
        (n, C, H, W), the distortion row of each (n,), and the piece of each (n,)."""
        full = self.full_resolution(maps)
        inputs, rows, owners = [], [], []
        for i, piece in enumerate(chunk):
            row = int(self.unit_row[units[i]])
            noise = row_noise(self.seeds[row], piece.draw, piece.start, piece.count, self.shape, self.device)
            inputs.append(self.d.images[self.d.image_of_row[row]] + torch.exp(full[i]) * noise)
            rows.append(torch.full((piece.count,), row, dtype=torch.long, device=self.device))
            owners.append(torch.full((piece.count,), i, dtype=torch.long, device=self.device))
        return torch.cat(inputs), torch.cat(rows), torch.cat(owners)

    def _ratios(self, theta: torch.Tensor, requests, units: torch.Tensor) -> torch.Tensor:
        """Mean D/τ of each request (i, draw, count), theta[i] and units[i] its map and unit; no autograd."""
        return torch.stack([values.mean() for values in self.ratio_samples(theta, units, requests)])

    def ratio_samples(self, maps: torch.Tensor, units: torch.Tensor, requests) -> list[torch.Tensor]:
        """D/τ of each sample of each request (i, draw, count), maps[i] and units[i] its map and unit."""
        parts: list[list[torch.Tensor]] = [[] for _ in requests]
        position = {(i, draw): j for j, (i, draw, _) in enumerate(requests)}
        with torch.no_grad():
            for chunk in pack(requests, self.eval_batch):
                index = torch.tensor([p.row for p in chunk], device=self.device)
                x, rows, _ = self._perturbed(maps[index], units[index], chunk)
                d, _ = self.d.flat(x, rows)
                for piece, values in zip(chunk, (d / self.s.tau).split([p.count for p in chunk])):
                    parts[position[piece.row, piece.draw]].append(values)
        return [torch.cat(p) for p in parts]

    def reconstruction_error(self, log_sigma: np.ndarray, samples: int) -> np.ndarray:
        """E_ε[(g(h(P(x'))) − x)²] per row, channel and pixel at the solved σ, (rows, C, H, W)."""
        maps = torch.as_tensor(log_sigma, device=self.device).unsqueeze(1)
        units = torch.arange(self.d.rows, device=self.device) * self.replicates

        def mean_error() -> torch.Tensor:
            total = torch.zeros((self.d.rows, *self.shape), device=self.device)
            requests = [(r, (RECONSTRUCTION,), samples) for r in range(self.d.rows)]
            with torch.no_grad():
                for chunk in pack(requests, self.eval_batch):
                    index = torch.tensor([p.row for p in chunk], device=self.device)
                    x, rows, _ = self._perturbed(maps[index], units[index], chunk)
                    _, errors = self.d.flat(x, rows, decoders=self.decoders)
                    total.index_add_(0, rows, errors)
            return total / samples

        return self.retrying(mean_error).cpu().numpy()

    # -- plumbing -------------------------------------------------------------------------------

    def full_resolution(self, theta: torch.Tensor) -> torch.Tensor:
        """(n, 1, h, w) on the lattice -> (n, 1, H, W), nearest neighbour."""
        if theta.shape[-2:] == (self.height, self.width):
            return theta
        return F.interpolate(theta, size=(self.height, self.width), mode="nearest")

    def retrying(self, stage: Callable[[], T]) -> T:
        """Run one stage (the start, a step, the measurement); on device out-of-memory halve the
        batch for the rest of the solve and run that stage again, keeping the work already done.
        The stage redone draws the same noise (row-local streams), so the answer does not change."""
        while True:
            try:
                return stage()
            except torch.OutOfMemoryError:
                if self.max_batch <= 1 and self.eval_batch <= 1:
                    raise InputError(
                        "out of device memory even at one sample per batch; use a smaller input or the cpu",
                        option="device",
                    ) from None
                self.halvings += 1
                self.max_batch = max(1, self.max_batch // 2)
                self.eval_batch = max(1, self.eval_batch // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


class _State:
    """Per-unit optimiser state: log σ, Adam moments and step counts, log λ, the iterate average."""

    def __init__(self, theta: torch.Tensor, settings: SolverSettings):
        self.theta = theta.requires_grad_(True)
        units = len(theta)
        device = theta.device
        self.settings = settings
        self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)
        self.count = torch.zeros(units, dtype=torch.long, device=device)
        self.log_multiplier = torch.full((units,), math.log(2.0), device=device)
        self.sum, self.summed = torch.zeros_like(theta), torch.zeros(units, device=device)
        self.average_from = torch.full((units,), settings.steps // 2, dtype=torch.long, device=device)

    def adam(self, units: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        """Adam (the torch.optim formula) on the rows `units` only; the others keep their state."""
        (b1, b2), shape = BETAS, (-1,) + (1,) * (self.theta.dim() - 1)
        self.m[units] = b1 * self.m[units] + (1 - b1) * grad
        self.v[units] = b2 * self.v[units] + (1 - b2) * grad * grad
        self.count[units] += 1
        t = self.count[units].double()
        correction1, correction2 = (1 - b1**t).float().view(shape), (1 - b2**t).float().view(shape)
        denominator = (self.v[units] / correction2).sqrt() + EPS
        step = lr.view(shape) * (self.m[units] / correction1) / denominator
        top = math.log(self.settings.sigma_max)
        self.theta.data[units] = (self.theta.data[units] - step).clamp(LOG_SIGMA_MIN, top)

    def accumulate(self, units: torch.Tensor) -> None:
        late = self.count[units] > self.average_from[units]
        chosen = units[late]
        self.sum[chosen] += self.theta.data[chosen]
        self.summed[chosen] += 1

    def restart_average(self, units: torch.Tensor, steps: int) -> None:
        """Average only the second half of the coming `steps` extra steps."""
        self.sum[units] = 0
        self.summed[units] = 0
        self.average_from[units] = self.count[units] + steps // 2

    def averaged_theta(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.theta.dim() - 1)
        fallback = self.summed.view(shape) == 0
        return torch.where(fallback, self.theta.detach(), self.sum / self.summed.clamp_min(1).view(shape))


def solve(
    distortion: Distortion,
    settings: SolverSettings,
    progress: Callable[[int], None] | None = None,
    decoders: Mapping[str, nn.Module] | None = None,
    reconstruction_samples: int = 0,
) -> Solution:
    """Solve every row within the memory budget; an out-of-memory on a device halves the batch and
    the solve goes on. With `decoders`, the RU objective; `reconstruction_samples` > 0 also fills
    `Solution.reconstruction_error` with E[(g − x)²] maps."""
    solver = Solver(distortion, settings, progress, decoders)
    solution = solver.solve()
    if not reconstruction_samples:
        return solution
    errors = solver.reconstruction_error(solution.log_sigma, reconstruction_samples)
    return replace(solution, reconstruction_error=errors)


__all__ = ["NOISE_BLOCK", "Solver", "solve"]
