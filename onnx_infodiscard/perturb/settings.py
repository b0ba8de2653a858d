"""What decides a solve (`SolverSettings`) and what it returns (`Solution`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError

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
    """Everything that decides the answer; identical τ for every layer and model (fairness).

    `max_batch` and `max_memory` only decide how the work is chunked, never the numbers: every
    row draws its own noise (see `noise`), so any chunking gives the same maps to float rounding.
    """

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
    max_batch: int = 256  # at most this many forward passes per chunk; fewer when `max_memory` asks
    seed: int = 0
    precision: str = "fp32"  # of the model's forward/backward in the optimisation steps: fp32, bf16 or fp16
    memory_format: str = "auto"  # of 4-D activations: auto, contiguous or channels_last (same answers, other speed)
    max_memory: int | None = None  # bytes for the solve's tensors; None: half of what the process may use
    extra_steps: int = 100  # at most this many more steps for a row that missed the budget after `steps`
    #: Solve each row as two replicates with independent noise and half the samples each (the same
    #: forward passes, as accurate on the linear oracle); the map is their mean, and their agreement
    #: is `Solution.reliability`. Needs samples >= 2.
    reliability: bool = True

    def validate(self) -> None:
        checks = [
            ("tau", self.tau > 0, f"{self.tau} is not > 0; the distortion budget must be positive (default 0.1)"),
            ("steps", self.steps > 0, f"{self.steps}: give at least 1 optimisation step (default 100)"),
            ("samples", self.samples > 0, f"{self.samples}: give at least 1 noise sample per step (default 16)"),
            ("eval_samples", self.eval_samples > 0, f"{self.eval_samples}: give at least 1 sample (default 64)"),
            ("lr", self.lr > 0, f"{self.lr} is not > 0 (default 0.1)"),
            ("sigma_max", self.sigma_max > 0, f"{self.sigma_max} is not > 0 (default 1.0, the full pixel range)"),
            ("grid", self.grid is None or self.grid > 0, f"{self.grid}: give a positive grid size, e.g. 16"),
            ("max_batch", self.max_batch > 0, f"{self.max_batch}: give at least 1 forward pass per chunk"),
            (
                "max_memory",
                self.max_memory is None or self.max_memory > 0,
                f"{self.max_memory}: give a positive number of bytes",
            ),
            ("extra_steps", self.extra_steps >= 0, f"{self.extra_steps}: give 0 or more extra steps (default 100)"),
            ("precision", self.precision in PRECISIONS, f"{self.precision!r}: use {', '.join(PRECISIONS)}"),
            (
                "memory_format",
                self.memory_format in MEMORY_FORMATS,
                f"{self.memory_format!r}: use {', '.join(MEMORY_FORMATS)}",
            ),
        ]
        for option, ok, message in checks:
            if not ok:
                raise InputError(message, option=option)

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
    steps: int  # of the normal schedule
    seconds: float
    max_batch: int  # forward passes per chunk, as chosen for the memory budget and after any out-of-memory halving
    extra_steps: np.ndarray | None = None  # (rows,), steps beyond `steps` a row needed to meet the budget
    reliability: np.ndarray | None = None  # (rows,), split-half reliability of the map (SolverSettings.reliability)
    reconstruction_error: np.ndarray | None = None  # (rows, C, H, W), E[(g − x)²] when asked for (RU)
    peak_memory: int | None = None  # bytes: the process's peak RSS on CPU, peak allocated on CUDA
    memory_budget: int | None = None  # bytes the batch was chosen for
    estimate: object | None = None  # the `memory.Estimate` made before the solve (bytes per sample, seconds)
    halvings: int = 0  # out-of-device-memory errors survived by halving the batch


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when torch sees a GPU, else CPU; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                "torch sees no CUDA device here (torch.cuda.is_available() is False); use cpu or auto", option="device"
            )
        return torch.device(name)
    raise InputError(f"{name!r}: use auto, cpu or cuda", option="device")
