"""Rows: one (image, layer) σ optimisation each, the unit that is solved, cached and scaled out.

A row's noise comes from its own generator (seeded by `--seed`, the image's content and the
layer's name), so its answer does not depend on which other rows are solved with it: rows can be
grouped, cached, resumed and sent to other machines without changing a number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .perturb import Distortion, Estimate, SolverSettings, estimate, solve
from .session import Session


@dataclass(frozen=True, order=True)
class Row:
    """Which optimisation: image `image` (index into the session's images) at layer `layer`."""

    layer: str
    image: int


@dataclass(frozen=True)
class SolvedRow:
    """One row's σ map at full input resolution and how well it met the budget."""

    log_sigma: np.ndarray = field(repr=False)  # (H, W), log of canonical units
    d_over_tau: float  # measured on fresh noise
    standard_error: float  # relative, of d_over_tau
    eval_samples: int
    multiplier: float  # final λ
    converged: bool
    steps: int  # of the normal schedule
    seconds: float  # this row's share of its group's solve
    extra_steps: int = 0  # beyond `steps`, given automatically to meet the budget
    reliability: float = float("nan")  # split-half reliability of the map (Spearman–Brown corrected)
    halvings: int = 0  # out-of-device-memory halvings of its group's batch

    ARRAYS = ("log_sigma",)

    def scalars(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in self.ARRAYS}


def all_rows(session: Session) -> list[Row]:
    """Every (image, layer) of the session, layer-major, so that a group mostly runs one depth."""
    return [Row(layer.name, i) for layer in session.layers for i in range(len(session.images))]


def groups(rows: Sequence[Row], settings: SolverSettings) -> list[list[Row]]:
    """Rows in groups of one device batch (`max_batch // samples` rows): the grain of progress,
    caching, resuming and scale-out. Batching more rows together would not run faster."""
    size = max(1, settings.max_batch // settings.samples)
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def distortion(session: Session, rows: Sequence[Row], settings: SolverSettings) -> Distortion:
    """D of `rows` on the session's device: what the solver perturbs."""
    features = {name: session.pipeline(name) for name in dict.fromkeys(row.layer for row in rows)}
    return Distortion(
        features,
        session.pixels(),
        [row.image for row in rows],
        [row.layer for row in rows],
        [image.name for image in session.images],
        settings.memory_format,
    )


def estimate_rows(session: Session, rows: Sequence[Row], settings: SolverSettings) -> Estimate:
    """Time and peak memory of solving `rows` here, from a short probe: what to tell a user before a long run."""
    return estimate(distortion(session, rows, settings), settings)


def solve_rows(
    session: Session, rows: Sequence[Row], settings: SolverSettings, progress: Callable[[int], None] | None = None
) -> list[SolvedRow]:
    """Solve `rows` together on the session's device; `progress(steps)` after each step."""
    solution = solve(distortion(session, rows, settings), settings, progress)
    share = solution.seconds / len(rows)
    return [
        SolvedRow(
            log_sigma=solution.log_sigma[k],
            d_over_tau=float(solution.d_over_tau[k]),
            standard_error=float(solution.standard_error[k]),
            eval_samples=int(solution.eval_samples[k]),
            multiplier=float(solution.multiplier[k]),
            converged=bool(solution.converged[k]),
            steps=solution.steps,
            seconds=share,
            extra_steps=int(solution.extra_steps[k]) if solution.extra_steps is not None else 0,
            reliability=float(solution.reliability[k]) if solution.reliability is not None else float("nan"),
            halvings=solution.halvings,
        )
        for k in range(len(rows))
    ]


def solve_groups(
    session: Session,
    todo: Iterable[list[Row]],
    settings: SolverSettings,
    done: Callable[[list[Row], list[SolvedRow]], None],
    progress: Callable[[int], None],
) -> None:
    """Solve group after group in this process, handing each finished group to `done` at once
    (so a cache keeps it even if the run is interrupted later)."""
    for group in todo:
        done(group, solve_rows(session, group, settings, lambda steps, n=len(group): progress(steps * n)))
