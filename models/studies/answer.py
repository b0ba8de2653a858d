"""Answer STUDY.toml's hypotheses with the library API (until the CLI's `compare --groups` is wired).

    OMP_NUM_THREADS=1 .venv/bin/python models/studies/answer.py models/studies/STUDY.toml \
        --max-images 20 --steps 60 --out /tmp/study_out

Writes study.json, study.csv, study.html and one PNG per hypothesis to --out and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from onnx_infodiscard.errors import InfodiscardError
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard.study import read_study, run_study, write_study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--max-eval-samples", type=int, default=4096)
    parser.add_argument("--all-rows", action="store_true", help="keep rows that did not converge")
    parser.add_argument("--out", default="study_out")
    parser.add_argument("--cache", default=None, help="folder of per-model results shared by runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        study = read_study(args.study)
        settings = SolverSettings(steps=args.steps, samples=args.samples, eval_samples=args.eval_samples,
                                  max_eval_samples=args.max_eval_samples)
        result = run_study(study, settings=settings, max_images=args.max_images, device="cpu",
                           rng=np.random.default_rng(study.seed), converged_only=not args.all_rows,
                           cache_dir=args.cache)
    except InfodiscardError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    write_study(result, args.out)
    print(f"{len(result.images)} images, {len(result.models)} models, tau {result.settings['tau']}, "
          f"steps {result.settings['steps']}; analysis {result.analysis_seconds:.0f} s, total "
          f"{time.perf_counter() - start:.0f} s")
    for name, acc in result.accuracy.items():
        print(f"  accuracy {name}: {acc:.3f}")
    for r in result.results:
        print(f"{r.hypothesis.text:60s} effect {r.effect:+.4f} CI [{r.low:+.4f}, {r.high:+.4f}] {r.verdict}"
              f" (missing {r.n_missing}, unconverged {r.n_unconverged})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
