"""Memory-bounded execution: measure what one noise sample costs, choose the batch to fit a budget.

Never relies on catching an out-of-memory error on the CPU (an allocation failure there is not a
`torch.OutOfMemoryError`; the kernel kills the process first). Before the solve, a probe batch runs
forward + input-gradient backward at every layer, and the tensors autograd saves are summed
(`torch.autograd.graph.saved_tensors_hooks`, on any device); the batch is the budget divided by the
costliest layer's bytes per sample.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .distortion import Distortion
from .noise import NOISE_BLOCK
from .settings import SolverSettings

#: Share of the memory available to the process that a solve may use when no budget is given.
DEFAULT_MEMORY_FRACTION = 0.5
#: Extra bytes per sample on top of what autograd saves: the gradient buffers of backward and the
#: transient outputs of the largest op, as multiples of the largest saved tensor.
BACKWARD_MARGIN, FORWARD_MARGIN = 2.0, 3.0
#: Forward passes per probe; the difference between two probe sizes cancels what a batch shares (weights).
PROBE = (1, 2)


@dataclass(frozen=True)
class Estimate:
    """What a solve will cost, predicted from a probe before it starts (bytes and seconds)."""

    bytes_per_sample: int  # forward + input-gradient backward, costliest layer
    eval_bytes_per_sample: int  # forward only (the D/τ measurement), costliest layer
    budget: int  # bytes the solve's tensors may take
    batch: int  # forward passes per chunk with gradients (the optimisation)
    eval_batch: int  # forward passes per chunk without (the measurement)
    fixed_bytes: int  # what every chunk needs whatever its size (a noise block), included in predicted_peak
    predicted_peak: int  # bytes above what the process held before the solve
    seconds: float  # predicted wall time of the whole solve, from timed probe steps
    fits: bool  # False when even one sample per chunk exceeds the budget


def available_memory(device: torch.device) -> int:
    """Bytes this process may still allocate: free device memory on CUDA; on the CPU the smaller of
    MemAvailable and the cgroup's limit minus its usage."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    candidates = []
    if (available := _proc_bytes("/proc/meminfo", "MemAvailable")) is not None:
        candidates.append(available)
    cgroups = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))
    for limit, usage in cgroups:
        try:
            text = Path("/sys/fs/cgroup", limit).read_text().strip()
            if text != "max" and int(text) < 1 << 60:
                candidates.append(int(text) - int(Path("/sys/fs/cgroup", usage).read_text()))
        except (OSError, ValueError):
            pass
    return max(min(candidates), 1 << 26) if candidates else 8 << 30


def _proc_bytes(path: str, key: str) -> int | None:
    """The `KEY:  N kB` line of a Linux /proc file, in bytes; None where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def peak_memory(device: torch.device) -> int:
    """The process's peak resident memory on the CPU, peak allocated bytes on CUDA.

    On Linux this is the address space's own high-water mark (`VmHWM`): `ru_maxrss` survives
    `exec`, so a child started by a large process (a test runner, a notebook) would report its
    parent's peak instead of its own.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if (high_water := _proc_bytes("/proc/self/status", "VmHWM")) is not None:
        return high_water
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _probe(
    distortion: Distortion, row: int, count: int, decoders: Mapping[str, nn.Module] | None, precision: str
) -> tuple[int, int, float]:
    """(bytes autograd saves, largest saved tensor, seconds) of one step of `count` samples of `row`."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), tensor.device.index or 0)] = storage.nbytes()
        return tensor

    image = distortion.images[distortion.image_of_row[row]]
    scale = torch.full((1, *image.shape[1:]), 0.1, device=image.device, requires_grad=True)
    generator = torch.Generator(device=image.device).manual_seed(0)  # never the global generator
    noise = torch.randn((count, *image.shape), generator=generator, device=image.device)
    rows = torch.full((count,), row, device=image.device, dtype=torch.long)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        d, errors = distortion.flat(image + scale * noise, rows, precision, decoders)
        loss = d.sum() + (errors.mean() if errors is not None else 0)
    loss.backward()
    if image.device.type == "cuda":
        torch.cuda.synchronize(image.device)
    return sum(seen.values()), max(seen.values(), default=0), time.perf_counter() - start


def estimate(
    distortion: Distortion, settings: SolverSettings, decoders: Mapping[str, nn.Module] | None = None
) -> Estimate:
    """Bytes per sample at the costliest layer, the batch that keeps the solve within
    `settings.max_memory` (default: half of what the process may use), and the predicted time."""
    device = distortion.images.device
    budget = settings.max_memory or int(DEFAULT_MEMORY_FRACTION * available_memory(device))
    input_bytes = 4 * distortion.images[0].numel()
    per_sample, eval_per_sample, seconds = 0, 0, 0.0
    for layer in distortion.layer_names:
        row = distortion.row_layers.index(layer)
        feature_bytes = 4 * distortion.clean[layer][0].numel()
        _probe(distortion, row, PROBE[0], decoders, settings.precision)  # warm-up: first calls allocate and plan
        small, _, _ = _probe(distortion, row, PROBE[0], decoders, settings.precision)
        large, largest, elapsed = _probe(distortion, row, PROBE[1], decoders, settings.precision)
        saved = max(large - small, 0) / (PROBE[1] - PROBE[0])
        largest = largest / PROBE[1]
        io = 4 * input_bytes + 3 * feature_bytes  # noise, x, σ⊙ε, the feature and its difference to the clean one
        per_sample = max(per_sample, int(saved + BACKWARD_MARGIN * largest + io))
        eval_per_sample = max(eval_per_sample, int(FORWARD_MARGIN * largest + io))
        rows = distortion.row_layers.count(layer)
        step_seconds = elapsed / PROBE[1]
        samples = (settings.steps + 4) * settings.samples + 0.35 * 3 * settings.eval_samples
        seconds += rows * samples * step_seconds
    fixed = NOISE_BLOCK * input_bytes  # a partial noise block is drawn whole
    room = max(budget - fixed, 0)
    batch = max(1, min(settings.max_batch, room // max(per_sample, 1)))
    eval_batch = max(1, min(4 * settings.max_batch, room // max(eval_per_sample, 1)))
    peak = max(fixed + max(batch * per_sample, eval_batch * eval_per_sample), PROBE[1] * per_sample)
    return Estimate(per_sample, eval_per_sample, budget, batch, eval_batch, fixed, peak, seconds, peak <= budget)
