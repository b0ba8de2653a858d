#!/usr/bin/env python
"""`compare` of the shipped digits models on the shipped images: one local process against Ray
with N workers on this machine, side by side in one run (alternating), same numbers asserted.

    python benchmarks/bench_ray.py [--workers 2] [--steps 20] [--images 8] [--repeats 2]

Prints one RESULT line: local and Ray seconds (medians), their ratio, and Ray's overhead per
row, (workers × Ray seconds − local seconds) / rows: the CPU time a row costs beyond its solve
(actor start-up, session rebuilt per worker, shipping rows and results). Each worker and the local
run use one torch thread, so the comparison is N cores against one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as in the tests

import numpy as np
import torch

from onnx_infodiscard import SolverSettings
from onnx_infodiscard.compare import compare
from onnx_infodiscard.embedded import MODELS

SHIPPED = ("digits_cnn", "keras_digits", "torchscript_digits", "torch_dynamo_digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    models = [MODELS / name / f"{name}.onnx" for name in SHIPPED]
    images = sorted((MODELS / "digits_cnn" / "images").glob("*.png"))[: args.images]
    settings = SolverSettings(steps=args.steps)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="warning")
    local_times, ray_times, local, remote = [], [], None, None
    for _ in range(args.repeats):
        start = time.perf_counter()
        local = compare(models, images, settings=settings, device="cpu")
        local_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        remote = compare(models, images, settings=settings, device="cpu", ray="auto")
        ray_times.append(time.perf_counter() - start)
    rows = sum(len(report.results) for report in local.reports)
    largest = max(
        float(np.abs(a.entropy - b.entropy).max())
        for ra, rb in zip(local.reports, remote.reports)
        for a, b in zip(ra.results, rb.results)
    )
    t_local, t_ray = statistics.median(local_times), statistics.median(ray_times)
    overhead = (args.workers * t_ray - t_local) / rows
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {len(models)} models, {len(images)} images, "
        f"{rows} rows, {args.steps} steps; max |ΔH| Ray vs local {largest:.1e}"
    )
    print(
        f"RESULT bench=compare_ray workers={args.workers} rows={rows} local_s={t_local:.1f} ray_s={t_ray:.1f} "
        f"speedup={t_local / t_ray:.2f} overhead_cpu_s_per_row={overhead:.2f}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
