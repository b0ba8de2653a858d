"""The localisation benchmark under the cross-validated protocol (issue #16), in pieces that fit a
shared CPU: one `localize` run per σ lattice, then CID's lattice chosen by cross-validation across
the runs from their saved maps (the same pure functions and folds `localize(grids=...)` uses).

    python benchmarks/localize_cv.py subset DIR [--every 5]      # every 5th benchmark image by name
    python benchmarks/localize_cv.py run DIR OUT [--grid G] [--cid-only] [--steps 100]
    python benchmarks/localize_cv.py combine OUT...               # nested CV over the runs' CID maps
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def subset(folder: Path, every: int) -> None:
    from onnx_infodiscard.embedded import BENCHMARK_MODEL

    source = BENCHMARK_MODEL.parent / "images"
    with open(source / "boxes.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["file"])[::every]
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / row["file"]).write_bytes((source / row["file"]).read_bytes())
    with open(folder / "boxes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} images in {folder}")


def run(folder: Path, out: Path, grid: int | None, cid_only: bool, steps: int) -> None:
    from onnx_infodiscard.localize import localize
    from onnx_infodiscard.localize_report import write_localization
    from onnx_infodiscard.perturb import SolverSettings

    start = time.perf_counter()
    kwargs = {"methods": ["cid"], "controls": []} if cid_only else {}
    seen: dict[str, int] = {}

    def progress(stage: str, advance: int, total: int) -> None:  # a line per tenth of each stage, to stderr
        seen[stage] = seen.get(stage, 0) + advance
        if total and (seen[stage] * 10 // total) != ((seen[stage] - advance) * 10 // total):
            print(f"{time.perf_counter() - start:7.0f} s  {stage}: {seen[stage]}/{total}", file=sys.stderr, flush=True)

    result = localize(None, [folder], folder / "boxes.csv", settings=SolverSettings(grid=grid, steps=steps),
                      device="cpu", progress=progress, **kwargs)
    write_localization(result, out, overlays=0)
    print(json.dumps(result.summary_json() | {"seconds": time.perf_counter() - start}, indent=1, default=str))


def combine(outs: list[Path]) -> None:
    from onnx_infodiscard.localization import cross_validated_accuracy, fraction_preference, sweep_hits
    from onnx_infodiscard.localize import FRACTIONS

    runs = [json.loads((out / "localization.json").read_text()) for out in outs]
    truths = [tuple(image["truth"]) for image in runs[0]["images"]]
    assert all([i["image"] for i in r["images"]] == [i["image"] for i in runs[0]["images"]] for r in runs)
    folds, seed = runs[0]["protocol"]["folds"], runs[0]["protocol"]["seed"]
    rows, cid = [], []
    for out, result in zip(outs, runs):
        grid = result["protocol"]["grid"]
        for name, m in result["methods"].items():
            label = f"cid@{'pixel' if grid is None else f'grid{grid}'}" if name == "cid" else name
            rows.append((label, m))
            if name == "cid":
                with np.load(out / "maps.npz") as maps:
                    cid.append((label, sweep_hits(maps["cid"], truths, FRACTIONS)))
    print("| map | loc (0.5) ± s.e. | loc CV ± s.e. (fractions per fold) | best on all | pointing | deletion AUC "
          "(prob., n) | old normalised AUC |")
    print("|---|---|---|---|---|---|---|")
    for label, m in rows:
        chosen = ", ".join(f"{f:.2f}" for f in m["cv_fractions"])
        print(f"| {label}{' (control)' if m['control'] else ''} | {m['loc_acc']:.3f} ± {m['loc_acc_se']:.3f} | "
              f"**{m['loc_acc_cv']:.3f} ± {m['loc_acc_cv_se']:.3f}** ({chosen}) | "
              f"{m['best_fraction']:.2f} → {m['loc_acc_best']:.3f} | {m['pointing_acc']:.3f} | "
              f"{m['deletion_auc']:.3f} ({m['deletion_images']}) | {m['deletion_auc_normalised']:.3f} |")
    if len(cid) > 1:
        hits = np.concatenate([h for _, h in cid], axis=1)
        cv = cross_validated_accuracy(hits, folds, seed, fraction_preference(FRACTIONS, len(cid)))
        chosen = [f"{cid[j // len(FRACTIONS)][0]} {FRACTIONS[j % len(FRACTIONS)]:.2f}" for j in cv.chosen]
        print(f"\nCID, lattice and fraction chosen together by {folds}-fold CV among {[n for n, _ in cid]}: "
              f"{cv.accuracy:.3f} ± {cv.se:.3f}; chosen per fold: {'; '.join(chosen)}")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("subset")
    p.add_argument("folder", type=Path)
    p.add_argument("--every", type=int, default=5)
    p = commands.add_parser("run")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--grid", type=int)
    p.add_argument("--cid-only", action="store_true")
    p.add_argument("--steps", type=int, default=100)
    p = commands.add_parser("combine")
    p.add_argument("outs", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "subset":
        subset(args.folder, args.every)
    elif args.command == "run":
        run(args.folder, args.out, args.grid, args.cid_only, args.steps)
    else:
        combine(args.outs)


if __name__ == "__main__":
    main()
