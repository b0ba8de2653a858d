"""The final projection onto D = τ and the measurement of D/τ, one row at a time in lockstep.

The shift is one number c per row, log σ ← clamp(log σ + c) on the positions below σ_max; those at
σ_max (fully discarded) stay there — unless they alone carry more than the budget, when no shift of
the others can reach it (deep rows of trained CNNs missed the budget that way): then they move
with the others.
D(c) is monotone, but not ∝ σ² far from the linear regime, so c is found by a bracketed secant
search on log D/τ over one fixed noise sample (common random numbers make D(c) smooth), then D/τ is
measured on fresh noise until its standard error is at most `max_standard_error`.
"""

from __future__ import annotations

import math

import torch

from .settings import LOG_SIGMA_MIN

#: Draw counters of the projection, distinct from those of the optimisation.
PILOT, MEASURE = 3, 4
SEARCH_STEPS, OUTER_ROUNDS = 10, 4


class Projector:
    """Projects and measures rows of a `Solver`; every decision about a row uses only that row."""

    def __init__(self, solver, rows: torch.Tensor):
        self.solver, self.s = solver, solver.s
        self.epoch = torch.zeros(solver.d.rows, dtype=torch.long, device=solver.device)  # re-projections so far

    def converged(self, result) -> torch.Tensor:
        _, ratio, se, _ = result
        return (torch.abs(ratio - 1) <= self.s.tolerance) & (se <= self.s.max_standard_error)

    def run(self, base: torch.Tensor, rows: torch.Tensor):
        """(log σ, D/τ, relative standard error, samples) of `rows` (all rows of the solve)."""
        return self.solver.retrying(lambda: self._project(base, rows))

    def update(self, result, base: torch.Tensor, rows: torch.Tensor):
        """`result` with `rows` projected again from the new maps `base` (on fresh noise)."""
        self.epoch[rows] += 1
        theta, ratio, se, n = (t.clone() for t in result)
        theta[rows], ratio[rows], se[rows], n[rows] = self.solver.retrying(lambda: self._project(base, rows))
        return theta, ratio, se, n

    def _shifted(self, base: torch.Tensor, shift: torch.Tensor, everything: torch.Tensor) -> torch.Tensor:
        """base + shift on the positions below σ_max, or on every position where `everything`."""
        top = math.log(self.s.sigma_max)
        moving = (base < top - 1e-6) | everything.view(-1, 1, 1, 1)
        return torch.where(moving, base + shift.view(-1, 1, 1, 1), base).clamp(LOG_SIGMA_MIN, top)

    def _saturated_alone_exceed(self, base: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Rows whose saturated positions alone (the rest at the lowest σ) carry more than τ."""
        holding = torch.zeros(len(rows), dtype=torch.bool, device=base.device)
        lowest = self._shifted(base, torch.full((len(rows),), -100.0, device=base.device), holding)
        return self._pilot(lowest, rows, -1) > 0

    def _project(self, base: torch.Tensor, rows: torch.Tensor):
        shift = torch.zeros(len(rows), device=base.device)
        self.everything = self._saturated_alone_exceed(base, rows)
        ratio = se = n = None
        active = torch.ones(len(rows), dtype=torch.bool, device=base.device)
        slope = torch.full((len(rows),), 2.0, device=base.device)
        for outer in range(OUTER_ROUNDS):
            chosen = active.nonzero().squeeze(1)
            everything = self.everything[chosen]
            if outer == 0:
                found = self._search(base[chosen], rows[chosen], shift[chosen], everything, outer)
                shift[chosen], slope[chosen] = found
            else:  # the precise measurement, not a pilot's noise, places the next shift
                shift[chosen] -= torch.log(ratio[chosen].clamp_min(1e-12)) / slope[chosen]
            r, e, c = self._measure(self._shifted(base[chosen], shift[chosen], everything), rows[chosen], outer)
            if ratio is None:
                ratio, se, n = r, e, c
            else:
                ratio[chosen], se[chosen], n[chosen] = r, e, c
            active = (ratio - 1).abs() > torch.clamp(2 * se, min=self.s.tolerance / 5)
            if not bool(active.any()):
                break
        return self._shifted(base, shift, self.everything), ratio, se, n

    def _pilot(self, theta: torch.Tensor, rows: torch.Tensor, outer: int) -> torch.Tensor:
        """log mean D/τ of each row on its fixed pilot sample of this round."""
        requests = [(i, (PILOT, int(self.epoch[r]), outer), self.s.eval_samples) for i, r in enumerate(rows.tolist())]
        values = self.solver.ratio_samples(theta, rows * self.solver.replicates, requests)
        return torch.log(torch.stack([v.mean() for v in values]).clamp_min(1e-30))

    def _search(
        self, base: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, everything: torch.Tensor, outer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shift c of each row with log D/τ(c) = 0 on the pilot sample: secant steps, kept inside
        the bracket found so far (bisection when a secant step leaves it); and the local slope
        d log(D/τ)/dc there, which places later shifts from precise measurements."""
        accuracy = math.log1p(self.s.tolerance / 10)
        c_a, f_a = start, self._pilot(self._shifted(base, start, everything), rows, outer)
        c_b = c_a - 0.5 * f_a  # D ∝ σ² near the linear regime
        low = torch.where(f_a < 0, c_a, torch.full_like(c_a, -math.inf))
        high = torch.where(f_a > 0, c_a, torch.full_like(c_a, math.inf))
        done = f_a.abs() <= accuracy
        c_b = torch.where(done, c_a, c_b)
        slope = torch.full_like(c_a, 2.0)  # d log(D/τ) / dc, measured by the secant steps
        for _ in range(SEARCH_STEPS):
            todo = (~done).nonzero().squeeze(1)
            if not len(todo):
                break
            f_b = f_a.clone()  # rows already done are not evaluated again, and nothing of theirs changes
            f_b[todo] = self._pilot(self._shifted(base[todo], c_b[todo], everything[todo]), rows[todo], outer)
            searching = ~done
            low = torch.where(searching & (f_b < 0), torch.maximum(low, c_b), low)
            high = torch.where(searching & (f_b > 0), torch.minimum(high, c_b), high)
            flat = searching & ((f_b - f_a).abs() < 1e-9)  # D does not move with c: every position at a bound
            moved = searching & ~flat & ((c_b - c_a).abs() > 1e-6)
            slope = torch.where(moved, (f_b - f_a) / torch.where(moved, c_b - c_a, torch.ones_like(c_b)), slope)
            done = done | (searching & (f_b.abs() <= accuracy)) | flat
            secant = c_b - f_b * (c_b - c_a) / torch.where(flat, torch.ones_like(f_b), f_b - f_a)
            bracketed = torch.isfinite(low) & torch.isfinite(high)
            outside = (secant <= low) | (secant >= high) | ~torch.isfinite(secant)
            middle = torch.where(bracketed, (low + high) / 2, c_b - 0.5 * f_b)
            step = torch.where(outside, middle, secant)
            step = torch.where(bracketed, step, step.clamp(c_b - 2.0, c_b + 2.0))  # at most ×e² in σ per step
            c_a, f_a = torch.where(done | ~searching, c_a, c_b), torch.where(done | ~searching, f_a, f_b)
            c_b = torch.where(done, c_b, step)
        return c_b, slope.clamp(0.25, 4.0)

    def _measure(self, theta: torch.Tensor, rows: torch.Tensor, outer: int):
        """D/τ of each row on fresh noise, each with the samples its own variation needs for a relative
        standard error <= `max_standard_error` (a pilot of `eval_samples`; deep layers need hundreds)."""
        s, device = self.s, theta.device
        count = torch.zeros(len(rows), dtype=torch.float64, device=device)
        total, squares = torch.zeros_like(count), torch.zeros_like(count)
        wanted = torch.full((len(rows),), float(s.eval_samples), dtype=torch.float64, device=device)
        for attempt in range(64):
            todo = (wanted > 0).nonzero().squeeze(1)
            if not len(todo):
                break
            requests = [(int(i), (MEASURE, int(self.epoch[rows[i]]), outer, attempt), int(wanted[i])) for i in todo]
            values = self.solver.ratio_samples(theta, rows * self.solver.replicates, requests)
            for i, v in zip(todo.tolist(), values):
                v = v.double()
                count[i] += len(v)
                total[i] += v.sum()
                squares[i] += v.pow(2).sum()
            mean = total / count.clamp_min(1)
            variance = (squares / count.clamp_min(1) - mean**2).clamp_min(0) * count / (count - 1).clamp_min(1)
            se = (variance / count.clamp_min(1)).sqrt() / mean.clamp_min(1e-12)
            needed = (count * (se / s.max_standard_error) ** 2 * 1.1).ceil()
            more = torch.maximum(needed - count, torch.full_like(count, 16.0)).clamp(max=s.max_eval_samples)
            more = torch.minimum(more, s.max_eval_samples - count)
            unsure = (se > s.max_standard_error) & (count < s.max_eval_samples)
            wanted = torch.where(unsure, more, torch.zeros_like(more))
        return mean.float(), se.float(), count.long()
