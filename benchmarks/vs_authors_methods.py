"""The two methods `bench_vs_authors.py` times: a faithful re-implementation of the authors' loop
(haotianSustc/deepinfo `step_capability_x.py`, hyper-parameters from their `main.py`) and this
project's solver on the same features, with a timer of the solver's stages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onnx_infodiscard.metrics import HALF_LOG_2PIE
from onnx_infodiscard.perturb import Distortion, SolverSettings, solve

TOLERANCE = 0.05  # |D/τ − 1| for "met the budget", as METHOD §4


@dataclass(frozen=True)
class AuthorsSettings:
    """The authors' defaults (`main.py`: capability_*), noise moved to the canonical space."""

    grid: int = 16  # capability_sigma_size
    samples: int = 8  # capability_batch_size
    lr: float = 1e-4  # capability_lr_x
    multiplier: float = 5.0  # capability_lambda_init_x, fixed (the schedule is commented out)
    steps: int = 100  # capability_epoch
    sigma_init: float = 0.01  # capability_sigma_init_decay
    pick_target: float = 1.5  # result_distance_clip: step_result.py keeps the step with D/D0 closest to it


# -- the two methods ------------------------------------------------------------------------------


@dataclass
class AuthorsResult:
    log_sigma: np.ndarray  # (H, W), full resolution
    d_over_tau: float  # final σ, fresh noise
    standard_error: float  # relative
    d0_over_tau: float  # D at the initial σ (their normaliser sigma_f), over τ
    final_loss_ratio: float  # D/D0 of the last training step
    picked_step: int  # the authors' own pick: the step whose D/D0 was closest to 1.5
    picked_d_over_tau: float  # its D/τ, from that step's 8-sample training estimate
    seconds: float


def authors_loop(
    feature, image: torch.Tensor, scale: torch.Tensor, a: AuthorsSettings, generator: torch.Generator
) -> tuple[torch.Tensor, list[float], float]:
    """One image, one layer, as `step_capability_x.py` does it. Returns (σ grid, D/D0 per step, D0).

    Our reading of their missing `model/noise_layer`: the parameter is σ itself (1, 1, 16, 16),
    initialised to `sigma_init_decay` everywhere (their result scripts take `log(param)` and
    `log(param²)` as the entropy, so the parameter is σ, not log σ); the noisy image is
    `x + upsample_nearest(σ)·ε`; the penalty is the mean entropy per value,
    mean(log σ) + ½ log 2πe, so its gradient is λ/(n·σ) (a mean of log σ² would only double λ).
    Their loss, `MSE(f', f)/sigma_f − λ·penalty`, where `sigma_f` is the distortion of one noise
    batch at the initial σ, is used with D of METHOD §3 in place of their MSE: the features here
    (max-pool and ReLU outputs) are non-negative, so their extra ReLU is the identity and
    MSE/MSE₀ = D/D₀ exactly. As in their loop, the clean feature is recomputed at every step and
    D₀ comes from one batch at the start. Departures (all in the authors' favour or neutral):
    the network's weights are frozen (no weight gradients), nothing is written to disk per step,
    and the noise is in the canonical [0, 1] space instead of after mean/std normalisation.
    """
    _, c, h, w = image.shape
    grid = (min(a.grid, h), min(a.grid, w))
    sigma = torch.full((1, 1, *grid), a.sigma_init, device=image.device, requires_grad=True)
    optimiser = torch.optim.SGD([sigma], lr=a.lr)

    def distortion(noise: torch.Tensor) -> torch.Tensor:
        clean = feature(image).float()  # recomputed each step, as in their loop
        noisy = image + F.interpolate(sigma, size=(h, w), mode="nearest") * noise
        return ((feature(noisy).float() - clean) ** 2).flatten(1).sum(1).mean() / scale

    with torch.no_grad():
        d0 = distortion(torch.randn((a.samples, c, h, w), generator=generator, device=image.device))
    ratios = []
    for _ in range(a.steps):
        noise = torch.randn((a.samples, c, h, w), generator=generator, device=image.device)
        ratio = distortion(noise) / d0
        loss = ratio - a.multiplier * (torch.log(sigma).mean() + HALF_LOG_2PIE)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        ratios.append(ratio.detach())
    return sigma.detach(), [float(r) for r in ratios], float(d0)


def run_authors(
    case, features, settings: AuthorsSettings, tau: float, eval_samples: int, device, seed: int, measure: bool
):
    """Every (image, layer) one after the other. Returns ({(i, layer): AuthorsResult}, seconds per image)."""
    results, per_image = {}, []
    for i in range(len(case.images)):
        image = case.images[i : i + 1].to(device)
        image_seconds = 0.0
        for j, layer in enumerate(case.layers):
            feature = features[layer]
            generator = torch.Generator(device=device).manual_seed(seed + 1000 * i + j)
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():  # N·s² of the clean feature, as Distortion computes it (METHOD §3)
                reference = feature(image).float()
                scale = reference.numel() * reference.double().var(unbiased=False).float()
            sigma, ratios, d0 = authors_loop(feature, image, scale, settings, generator)
            _sync(device)
            seconds = time.perf_counter() - start
            image_seconds += seconds
            if not measure:
                continue
            h, w = image.shape[-2:]
            log_sigma = torch.log(F.interpolate(sigma, size=(h, w), mode="nearest").clamp_min(1e-12))
            ratio, se = measure_fixed(feature, image, reference, scale, log_sigma, tau, eval_samples, generator)
            pick = int(np.argmin(np.abs(np.array(ratios) - settings.pick_target)))
            results[(i, layer)] = AuthorsResult(
                log_sigma=log_sigma[0, 0].cpu().numpy(),
                d_over_tau=ratio,
                standard_error=se,
                d0_over_tau=d0 / tau,
                final_loss_ratio=ratios[-1],
                picked_step=pick,
                picked_d_over_tau=ratios[pick] * d0 / tau,
                seconds=seconds,
            )
        per_image.append(image_seconds)
    return results, per_image


def measure_fixed(feature, image, reference, scale, log_sigma, tau, samples, generator, chunk: int = 16):
    """D/τ of a fixed σ map on `samples` fresh noise draws: (mean, relative standard error)."""
    c, h, w = image.shape[1:]
    values = []
    with torch.no_grad():
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            noise = torch.randn((k, c, h, w), generator=generator, device=image.device)
            noisy = image + torch.exp(log_sigma) * noise
            values.append(((feature(noisy).float() - reference) ** 2).flatten(1).sum(1) / scale / tau)
    values = torch.cat(values).double()
    mean = float(values.mean())
    return mean, float(values.std(unbiased=True) / math.sqrt(len(values)) / max(mean, 1e-300))


def run_ours(case, features, settings: SolverSettings, device, stages: bool = True):
    """This project's solver on every row at once: one Distortion, one solve (`analyze` solves the
    same rows in groups of one device batch; with row-local noise a row's numbers are the same).

    Returns (solution, seconds, phases): `phases` splits the time by the solver's stages where
    they can be found (see `PhaseTimer`); it is informational and does not change the run.
    """
    names = list(case.layers)
    n = len(case.images)
    with PhaseTimer(device, stages) as phases:
        _sync(device)
        start = time.perf_counter()
        images = case.images.to(device)
        image_of_row = [i for _ in names for i in range(n)]
        layer_of_row = [name for name in names for _ in range(n)]
        settings = settings.on(device)  # as analyze does: `auto` choices made for the device
        distortion = Distortion(features, images, image_of_row, layer_of_row, case.image_names, settings.memory_format)
        solution = solve(distortion, settings)
        _sync(device)
        seconds = time.perf_counter() - start
    phases.times["other"] = seconds - sum(phases.times.values())
    return solution, seconds, phases


class PhaseTimer:
    """Times the stages of `onnx_infodiscard.perturb.Solver` by wrapping its methods for the
    duration of one solve: `init` (the uniform start on the constraint), `steps` (every
    optimisation step's forward and backward), `measure` (projection onto D = τ and the final
    measurement on fresh noise); `other` is the rest (Distortion set-up, optimiser, Python).
    Stages the solver no longer has are skipped, so a refactored solver still runs here."""

    STAGES = {"_initial_log_sigma": "init", "_accumulate_gradient": "steps", "_project_and_measure": "measure"}

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.enabled = enabled  # off: time nothing (the wrappers synchronise the device once per stage call)
        self.times: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._saved: list = []

    def __enter__(self):
        from onnx_infodiscard import perturb

        solver = getattr(perturb, "Solver", None) if self.enabled else None
        for method, stage in self.STAGES.items():
            original = getattr(solver, method, None) if solver is not None else None
            if original is None:
                continue
            self._saved.append((solver, method, original))
            setattr(solver, method, self._timed(original, stage))
        return self

    def __exit__(self, *exc):
        for owner, method, original in self._saved:
            setattr(owner, method, original)

    def _timed(self, original, stage):
        def wrapper(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
                self.calls[stage] = self.calls.get(stage, 0) + 1

        return wrapper

    def describe(self, images: int) -> str:
        if not self.enabled:
            return "not timed (--no-stages)"
        parts = [f"{stage} {seconds / images:.3f}" for stage, seconds in self.times.items()]
        steps = self.calls.get("steps")
        if steps:
            parts.append(f"({self.times['steps'] / steps / images:.4f} per step, {steps} steps)")
        return "s/img: " + ", ".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
