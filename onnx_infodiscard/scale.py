"""Scale-out on Ray: row groups as tasks on actors that each hold one loaded, converted and
cross-checked model (a `Session` rebuilt from its `PortableSession`), reused across their rows.
A `RayPool` keeps its actors for a whole job (a comparison's or a study's models, a localisation's
grids), so that each worker process starts (imports torch and onnx2torch) once, not once per model.

Only imported with `ray=...` (extra `onnx-infodiscard[ray]`). `auto` finds a running cluster
(`RAY_ADDRESS`, or the latest `ray start` on this machine) or starts a local one; any other
value is a cluster address. A worker that dies is restarted by Ray and its group retried; if
retries run out the run fails with an error naming the rows, never with a partial report.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence

from .errors import InfodiscardError, InputError
from .perturb import SolverSettings
from .rows import Row, SolvedRow, solve_rows
from .session import Session

#: How often Ray restarts a dead worker and retries its group before the run fails.
RETRIES = 3
#: The driver's wait for a row group returns this often, so that a signal handler (SIGTERM, Ctrl-C)
#: runs within a second: Python handlers run only between bytecodes, never inside Ray's C++ wait.
WAKE_S = 1.0


class RowWorker:
    """One Ray actor: opens a session on the first group of its model, then reuses it for every
    later group of that model; a group of another model replaces it (one model in memory)."""

    def __init__(self, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # this worker process's own pool: one per CPU Ray gave it
        self.device = device
        self.session: Session | None = None
        self.session_ref: str | None = None

    def solve(self, portable: list, rows: Sequence[Row], settings: SolverSettings) -> list[SolvedRow]:
        """`portable`: [a reference to the PortableSession], fetched only when this worker (or its
        restarted successor) does not hold that session yet; the actor's constructor holds no
        object, so Ray can always restart it."""
        ref = portable[0].hex()
        if self.session_ref != ref:
            import ray

            self.session = None  # the previous model's memory goes before the next one loads
            self.session = ray.get(portable[0]).open(self.device)
            self.session_ref = ref
        return solve_rows(self.session, rows, settings)


def connect(address: str):
    """Ray, connected: to the cluster at `address`, or for `auto` a running one or a new local one."""
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed; pip install 'onnx-infodiscard[ray]'", option="ray") from None
    if not ray.is_initialized():
        # ray.init replaces the caller's SIGTERM handler with one that aborts the driver (exit 134,
        # a C++ stack line); the caller's is put back, so that a terminated run ends as it would without Ray.
        main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            ray.init(
                address=None if address == "auto" else address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="error",  # not the token-authentication notice every local cluster prints
                configure_logging=True,
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise InputError(
                f"cannot reach a Ray cluster at {address!r} ({err}); start one with `ray start --head` or use auto",
                option="ray",
            ) from None
        finally:
            if main_thread and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
    return ray


class RayPool:
    """Ray actors for one job, started with its first model and killed by `close` (or the `with`
    block's end); `solve` runs one model's row groups on them."""

    def __init__(self, address: str) -> None:
        self.ray = connect(address)
        self.actors: list = []
        self.gpu = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def _actors(self, session: Session, groups: int) -> list:
        """Up to one actor per CPU of the cluster (per GPU when the run is on CUDA and the cluster
        has GPUs), started as a model's groups first need them and kept for the next models."""
        resources = self.ray.cluster_resources()
        if not self.actors:
            self.gpu = session.device.type == "cuda" and resources.get("GPU", 0) >= 1
        wanted = min(int(resources.get("GPU" if self.gpu else "CPU", 1)) or 1, groups)
        if len(self.actors) < wanted:
            options = {"num_cpus": 1, "num_gpus": 1 if self.gpu else 0}
            actor = self.ray.remote(**options, max_restarts=RETRIES, max_task_retries=RETRIES)(RowWorker)
            self.actors += [actor.remote("cuda" if self.gpu else "cpu", 1) for _ in range(wanted - len(self.actors))]
        return self.actors

    def solve(
        self,
        session: Session,
        todo: Sequence[list[Row]],
        settings: SolverSettings,
        done: Callable[[list[Row], list[SolvedRow]], None],
        progress: Callable[[int], None],
    ) -> None:
        """Spread `todo` over the actors; `done(group, results)` as each group returns, in any order."""
        ray = self.ray
        portable = [ray.put(session.portable())]  # shipped once, held here until this model's rows are done
        settings_ref = ray.put(settings)
        queue = list(todo)
        running = {}
        for worker in self._actors(session, len(todo)):
            if queue:
                group = queue.pop(0)
                running[worker.solve.remote(portable, group, settings_ref)] = (worker, group)
        while running:
            ready = _wait(ray, list(running))
            if not ready:
                continue
            worker, group = running.pop(ready[0])
            try:
                results = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                names = ", ".join(f"{row.layer}@image{row.image}" for row in group[:3])
                raise InfodiscardError(
                    f"a Ray worker failed {RETRIES + 1} times on rows {names}...: "
                    f"{type(err).__name__}; nothing was reported, rerun to resume from the cache"
                ) from err
            done(group, results)
            progress(len(group) * settings.steps)
            if queue:
                group = queue.pop(0)
                running[worker.solve.remote(portable, group, settings_ref)] = (worker, group)


def _wait(ray, refs: list) -> list:
    """The refs of `refs` that are ready, after at most `WAKE_S`. A signal handler that raised inside
    Ray's wait (SIGTERM's `Terminated`, Ctrl-C) reaches us wrapped in a SystemError; it is re-raised
    as itself, so that the run ends as an interrupted one, not as an internal error."""
    try:
        ready, _ = ray.wait(refs, num_returns=1, timeout=WAKE_S)
    except SystemError as err:
        if isinstance(err.__cause__, BaseException) and not isinstance(err.__cause__, Exception):
            raise err.__cause__ from None
        raise
    return ready
