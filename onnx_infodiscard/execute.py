"""Where rows are solved: taken from the row cache when there, else in this process or on Ray.

Whatever the executor, a row's numbers are the same (row-local noise), so the cache can mix rows
solved at different times, in different processes and on different machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .perturb import SolverSettings
from .rowcache import RowCache
from .rows import Row, SolvedRow, groups, solve_groups
from .session import Session

if TYPE_CHECKING:
    from .scale import RayPool

STAGE = "CID σ (images×layers×steps)"


@contextmanager
def ray_pool(ray: str | RayPool | None) -> Iterator[RayPool | None]:
    """One `RayPool` for a job of several solves (its workers start once), or the caller's own
    pool, or None without Ray (nothing of Ray imported)."""
    if not isinstance(ray, str):
        yield ray
        return
    from .scale import RayPool

    with RayPool(ray) as pool:
        yield pool


def solve_all(
    session: Session,
    rows: Sequence[Row],
    settings: SolverSettings,
    *,
    cache: RowCache | None = None,
    ray: str | RayPool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[Row, SolvedRow], int]:
    """Every row's solution and how many of them came from the cache.

    Each finished group is stored at once, so an interrupted run resumes where it stopped.
    `ray`: None runs here; `auto`, a cluster address or a `RayPool` runs the groups as Ray tasks.
    """
    from . import __version__

    keys = {row: cache.key(session, row, settings, __version__) for row in rows} if cache else {}
    solved: dict[Row, SolvedRow] = {}
    for row in rows:
        hit = cache.get(keys[row]) if cache else None
        if hit is not None:
            solved[row] = hit
    from_cache = len(solved)
    todo = groups([row for row in rows if row not in solved], settings)
    total = sum(len(group) for group in todo) * settings.steps
    report = progress or (lambda stage, advance, total: None)

    def done(group: list[Row], results: list[SolvedRow]) -> None:
        for row, result in zip(group, results):
            solved[row] = result
            if cache:
                cache.put(keys[row], result)

    if todo:
        report(STAGE, 0, total)
        tick = lambda advance: report(STAGE, advance, total)  # noqa: E731
        if ray:
            with ray_pool(ray) as pool:
                pool.solve(session, todo, settings, done, tick)
        else:
            solve_groups(session, todo, settings, done, tick)
    return solved, from_cache
