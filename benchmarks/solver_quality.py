"""Solver settings against a long reference run on one model (default: the shipped digits CNN): speed vs map quality.

    python benchmarks/solver_quality.py [--model models/cluttered_digits/cluttered_digits.onnx] --images 6 \
        --config 'defaults={}' --config '40x8={"steps": 40, "samples": 8}' --config 'bf16={"precision": "bf16"}'

The first line is the reference (default: 400 steps × 16 samples). For every other configuration it
prints the wall time, mean and max |ΔCID| against the reference (nats per value) and the mean / min
Pearson correlation of the log σ maps, over images × the card's suggested layers. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from onnx_infodiscard.analysis import analyze
from onnx_infodiscard.embedded import DEFAULT_MODEL
from onnx_infodiscard.perturb import SolverSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="an .onnx with a card and images/ beside it (default: the shipped digits CNN)",
    )
    parser.add_argument(
        "--images", type=int, default=6, help="first N images of the model's images/ folder (default 6)"
    )
    parser.add_argument(
        "--reference", default='{"steps": 400, "samples": 16}', help="SolverSettings JSON of the reference"
    )
    parser.add_argument("--config", action="append", default=[], help="NAME=SolverSettings JSON; repeatable")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = sorted((args.model.parent / "images").glob("*.png"))[: args.images]
    configs = [("reference", json.loads(args.reference))] + [
        (text.split("=", 1)[0], json.loads(text.split("=", 1)[1])) for text in args.config or ["defaults={}"]
    ]
    reference = None
    for name, overrides in configs:
        start = time.perf_counter()
        report = analyze(args.model, images, settings=SolverSettings(**overrides), device="cpu")
        seconds = time.perf_counter() - start
        maps = np.stack([r.log_sigma for r in report.results])
        cids = np.array([r.cid for r in report.results])
        converged = np.mean([r.converged for r in report.results])
        if reference is None:
            reference = maps, cids
            print(f"{name:24s} {seconds:7.1f} s  converged {converged:.2f}  {overrides}", flush=True)
            continue
        corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps, reference[0])]
        delta = np.abs(cids - reference[1])
        print(
            f"{name:24s} {seconds:7.1f} s  |ΔCID| mean {delta.mean():.4f} max {delta.max():.4f}  "
            f"map corr mean {np.mean(corr):.3f} min {np.min(corr):.3f}  converged {converged:.2f}  {overrides}",
            flush=True,
        )


if __name__ == "__main__":
    main()
