"""The σ optimisation (METHOD §2–§4): the widest Gaussian input cloud whose features stay within τ.

- `settings`: `SolverSettings` (what decides the answer) and `Solution` (what a solve returns);
- `distortion`: `Distortion`, the normalised feature distortion D of every row, and `Pipeline`;
- `noise`: row-local noise streams (`row_seed`, `image_hash`), so rows never depend on each other;
- `memory`: `estimate`, the probe that sizes batches to a memory budget and predicts the time;
- `solver` and `project`: the optimisation, and the final projection onto D = τ with its measurement.
"""

from .distortion import Distortion, Feature, Pipeline
from .memory import Estimate, available_memory, estimate, peak_memory, usable_cores
from .noise import NOISE_BLOCK, image_hash, row_seed
from .settings import (
    DUAL_RATE,
    LOG_SIGMA_MIN,
    MEMORY_FORMATS,
    PRECISIONS,
    RECONSTRUCTION_FLOOR,
    Solution,
    SolverSettings,
    resolve_device,
)
from .solver import Solver, solve

__all__ = [
    "DUAL_RATE",
    "LOG_SIGMA_MIN",
    "MEMORY_FORMATS",
    "NOISE_BLOCK",
    "PRECISIONS",
    "RECONSTRUCTION_FLOOR",
    "Distortion",
    "Estimate",
    "Feature",
    "Pipeline",
    "Solution",
    "Solver",
    "SolverSettings",
    "available_memory",
    "estimate",
    "image_hash",
    "peak_memory",
    "resolve_device",
    "row_seed",
    "solve",
    "usable_cores",
]
