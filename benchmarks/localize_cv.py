"""The localisation benchmark under the cross-validated protocol (issue #16), in pieces that fit a
shared CPU: one `localize` run per σ lattice, then CID's lattice chosen by cross-validation across
the runs from their saved maps (the same pure functions and folds `localize(grids=...)` uses).

    python benchmarks/localize_cv.py subset DIR [--every 5] [--offset 0]  # every 5th benchmark image by name
    python benchmarks/localize_cv.py run DIR OUT [--grid G] [--cid-only] [--steps 100]
    python benchmarks/localize_cv.py combine OUT...     # every map re-scored on the runs' pooled images;
                                                        # CID's lattice and fraction chosen together by CV
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def subset(folder: Path, every: int, offset: int) -> None:
    """Copy every `every`-th benchmark image by name (from `offset`) and its line of boxes.csv into `folder`."""
    from onnx_infodiscard.embedded import BENCHMARK_MODEL

    source = BENCHMARK_MODEL.parent / "images"
    header, *lines = (source / "boxes.csv").read_text().splitlines()
    kept = sorted(lines, key=lambda line: line.split(",", 1)[0])[offset::every]  # the file name comes first
    folder.mkdir(parents=True, exist_ok=True)
    for line in kept:
        name = line.split(",", 1)[0]
        shutil.copyfile(source / name, folder / name)
    (folder / "boxes.csv").write_text("\n".join([header, *kept]) + "\n")
    print(f"{len(kept)} images in {folder}")


def run(folder: Path, out: Path, grid: int | None, cid_only: bool, steps: int) -> None:
    from onnx_infodiscard.localize import localize
    from onnx_infodiscard.output.localization import write_localization
    from onnx_infodiscard.perturb import SolverSettings

    start = time.perf_counter()
    kwargs = {"methods": ["cid"], "controls": []} if cid_only else {}
    seen: dict[str, int] = {}

    def progress(stage: str, advance: int, total: int) -> None:  # a line per tenth of each stage, to stderr
        seen[stage] = seen.get(stage, 0) + advance
        if total and (seen[stage] * 10 // total) != ((seen[stage] - advance) * 10 // total):
            print(f"{time.perf_counter() - start:7.0f} s  {stage}: {seen[stage]}/{total}", file=sys.stderr, flush=True)

    result = localize(
        None,
        [folder],
        folder / "boxes.csv",
        settings=SolverSettings(grid=grid, steps=steps),
        device="cpu",
        progress=progress,
        **kwargs,
    )
    write_localization(result, out, overlays=0)
    print(json.dumps(result.summary_json() | {"seconds": time.perf_counter() - start}, indent=1, default=str))


def _pooled(outs: list[Path]) -> dict[str, dict]:
    """Every map of the runs, pooled over their image sets and sorted by image name (the order a single
    `localize` on all the images would use): {map: {maps, truths, pointing, deletion, correct, ...}}."""
    pooled: dict[str, dict] = {}
    for out in outs:
        result = json.loads((out / "localization.json").read_text())
        grid = result["protocol"]["grid"]
        with np.load(out / "maps.npz") as maps:
            stacks = {name: maps[name] for name in maps.files}
        for name, m in result["methods"].items():
            label = f"cid@{'pixel' if grid is None else f'grid{grid}'}" if name == "cid" else name
            entry = pooled.setdefault(label, {"control": m["control"], "rows": [], "normalised": []})
            entry["normalised"].append((m["deletion_auc_normalised"], len(result["images"])))
            for i, image in enumerate(result["images"]):
                entry["rows"].append(
                    (
                        image["image"],
                        stacks[name][i],
                        tuple(image["truth"]),
                        image["pointing"][name],
                        image["deletion_auc"][name],
                        image["correct"],
                    )
                )
    for entry in pooled.values():
        entry["rows"].sort(key=lambda row: row[0])
    names = {label: [row[0] for row in entry["rows"]] for label, entry in pooled.items()}
    assert len({tuple(v) for v in names.values()}) == 1, "every map must cover the same images"
    return pooled


def combine(outs: list[Path], folds: int = 5, seed: int = 0) -> None:
    from onnx_infodiscard.localization import (
        DEFAULT_FRACTION,
        best_option,
        cross_validated_accuracy,
        cross_validated_choice,
        fraction_preference,
        sweep_hits,
    )
    from onnx_infodiscard.localize import FRACTIONS

    pooled = _pooled(outs)
    fixed, preference = FRACTIONS.index(DEFAULT_FRACTION), fraction_preference(FRACTIONS)
    n = len(next(iter(pooled.values()))["rows"])
    print(f"{n} images, {folds}-fold CV, fold seed {seed}\n")
    print(
        "| map | loc (0.5) ± s.e. | **loc CV ± s.e.** (fraction per fold) | best on all (optimistic) | pointing | "
        "deletion AUC of p (correct images) | old normalised AUC |"
    )
    print("|---|---|---|---|---|---|---|")
    cid = []
    for label, entry in pooled.items():
        rows = entry["rows"]
        hits = sweep_hits(np.stack([r[1] for r in rows]), [r[2] for r in rows], FRACTIONS)
        if label.startswith("cid"):
            cid.append((label, hits))
        p, cv = hits[:, fixed].mean(), cross_validated_accuracy(hits, folds, seed, preference)
        best = best_option(hits, preference)
        kept = [r[4] for r in rows if r[5]]
        weighted = [(v, k) for v, k in entry["normalised"] if v is not None]
        old = sum(v * k for v, k in weighted) / sum(k for _, k in weighted) if weighted else float("nan")
        chosen = ", ".join(f"{FRACTIONS[j]:.2f}" for j in cv.chosen)
        print(
            f"| {label}{' (control)' if entry['control'] else ''} | {p:.3f} ± {np.sqrt(p * (1 - p) / n):.3f} | "
            f"**{cv.accuracy:.3f} ± {cv.se:.3f}** ({chosen}) | "
            f"{FRACTIONS[best]:.2f} → {hits[:, best].mean():.3f} | "
            f"{np.mean([r[3] for r in rows]):.3f} | {np.mean(kept):.3f} ({len(kept)}) | {old:.3f} |"
        )
    if len(cid) > 1:
        cv, picks = cross_validated_choice([h for _, h in cid], FRACTIONS, folds, seed)
        chosen = [f"{cid[g][0]} {f:.2f}" for g, f in picks]
        print(
            f"\nCID, lattice and fraction chosen together by {folds}-fold CV among {[n for n, _ in cid]}: "
            f"**{cv.accuracy:.3f} ± {cv.se:.3f}**; chosen per fold: {'; '.join(chosen)}"
        )


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("subset")
    p.add_argument("folder", type=Path)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--offset", type=int, default=0)
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
        subset(args.folder, args.every, args.offset)
    elif args.command == "run":
        run(args.folder, args.out, args.grid, args.cid_only, args.steps)
    else:
        combine(args.outs)


if __name__ == "__main__":
    main()
