#!/usr/bin/env python
"""This project's σ solver against a faithful re-implementation of the authors' loop, side by side.

    python benchmarks/bench_vs_authors.py --device cpu|cuda [--quick]
        [--models digits,vgg16,resnet50] [--images N] [--repeats R] [--steps S] [--size PX]

One process, one device. For each model it prepares the graph once (load, normalise, convert,
cross-check: untimed, shared by both methods), then times, on the same images and layers:

(a) the authors' loop (haotianSustc/deepinfo `step_capability_x.py`; hyper-parameters from their
    `main.py`): one image and one layer at a time, fp32, σ on a 16×16 grid shared over channels
    and upsampled by nearest neighbour to the input size, 8 noise samples per step, plain SGD with
    lr 1e-4 on σ itself, a fixed λ = 5, 100 steps. See `authors_loop` for our reading of their
    (unreleased) noise layer.
(b) this project's solver with its defaults: one `Distortion` over every (image, layer) row and
    one `solve` call, on the same `Session` (`onnx_infodiscard.session.open_session`) as `analyze`.

Both use the same feature function h_l(P(x)) (the converted ONNX graph cut after the layer, with
the model's preprocessing P inside), noise in the canonical [0, 1] input space, and the
distortion D of METHOD §3, so the quality numbers compare: after its 100 steps the authors' σ is
measured on fresh noise (≥ 64 samples) like ours, and the table shows whether it met D = τ.

Timings are wall-clock medians over `--repeats`, the two methods alternating in this process, so
their ratio is fair on a shared machine even when absolute times drift. Untimed: model export and
preparation, the authors' final quality measurement, warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from onnx_infodiscard.errors import InfodiscardError
from onnx_infodiscard.images import CanonicalImage
from onnx_infodiscard.metrics import HALF_LOG_2PIE
from onnx_infodiscard.perturb import MEMORY_FORMATS, PRECISIONS, SolverSettings, resolve_device
from onnx_infodiscard.session import open_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_authors_cases import MODELS, Case, digits_case, torchvision_case  # noqa: E402
from vs_authors_methods import TOLERANCE, AuthorsSettings, run_authors, run_ours  # noqa: E402

# -- the benchmark --------------------------------------------------------------------------------


def benchmark(case: Case, device: torch.device, args) -> tuple[str, bool]:
    """Prepare `case` once, time both methods on it, print the times and the quality table; the RESULT line."""
    session = _prepare(case, device)
    features = {name: session.pipeline(name) for name in case.layers}
    authors = AuthorsSettings(steps=args.steps or AuthorsSettings.steps)
    ours = SolverSettings(
        **({"steps": args.steps} if args.steps else {}),
        **({"grid": args.our_grid} if args.our_grid else {}),
        precision=args.precision,
        memory_format=args.memory_format,
    )
    print(f"    authors: {authors}")
    print(f"    ours:    {ours}")
    if args.warmup:
        small = replace(case, images=case.images[:1], image_names=case.image_names[:1])
        run_authors(small, features, replace(authors, steps=2), ours.tau, 8, device, args.seed, measure=False)
        run_ours(small, features, replace(ours, steps=2, max_eval_samples=ours.eval_samples), device)
    timed = _timed_repeats(case, features, authors, ours, device, args)
    a, b = _print_times(case, authors, ours, timed, args.repeats)
    results, solution = timed["results"], timed["solution"]
    _print_quality(case, results, solution, ours.tau)
    converged = bool(np.all(solution.converged))
    met = sum(abs(r.d_over_tau - 1) <= TOLERANCE for r in results.values())
    print(
        f"    summary: authors met the budget on {met}/{len(results)}; ours converged on "
        f"{int(np.sum(solution.converged))}/{len(solution.converged)}"
    )
    # never mistaken for a run at the defaults: fewer steps, another precision or a forced layout
    name = (
        case.name
        + (f"-steps{args.steps}" if args.steps else "")
        + (f"-{args.precision}" if args.precision != "fp32" else "")
        + (f"-{args.memory_format}" if args.memory_format != "auto" else "")
    )
    line = (
        f"RESULT model={name} device={device.type} authors_s_per_img={a:.4g} ours_s_per_img={b:.4g} "
        f"speedup={a / b:.3g} converged={'true' if converged else 'false'}"
    )
    return line, converged


def _prepare(case: Case, device: torch.device):
    """The case's `Session` (load, normalise, convert, cross-check: untimed), described."""
    print(
        f"\n=== {case.name}: {len(case.images)} image(s) {tuple(case.images.shape[1:])}, {len(case.layers)} layers, device {device}"
    )
    for note in case.notes:
        print(f"    {note}")
    canonical = [
        CanonicalImage(name, pixels.numpy(), tuple(pixels.shape[1:]))
        for name, pixels in zip(case.image_names, case.images)
    ]
    session = open_session(
        case.path, layers=case.layers, preprocessing=case.preprocessing, device=str(device), canonical=canonical
    )
    print(
        f"    prepared in {session.seconds:.1f} s (untimed); cross-check: {session.crosscheck.provider}, "
        f"passed={session.crosscheck.passed}; batch_safe={session.conversion.batch_safe}"
    )
    for layer in session.layers:
        print(f"    layer {layer.index:4d} {layer.name}  {layer.op_type} {layer.shape}")
    return session


def _timed_repeats(case: Case, features, authors: AuthorsSettings, ours: SolverSettings, device, args) -> dict:
    """`args.repeats` timed runs, the methods alternating; the last repeat's authors' results are measured."""
    timed = {"authors": [], "ours": [], "authors_images": [], "ours_phases": []}
    for repeat in range(args.repeats):
        measure = repeat == args.repeats - 1
        results, per_image = run_authors(
            case, features, authors, ours.tau, args.eval_samples, device, args.seed, measure
        )
        timed["authors"].append(sum(per_image) / len(per_image))
        timed["authors_images"].append(per_image)
        solution, seconds, phases = run_ours(case, features, ours, device, args.stages)
        timed["ours"].append(seconds / len(case.images))
        timed["ours_phases"].append(phases)
        print(
            f"    repeat {repeat + 1}/{args.repeats}: authors {timed['authors'][-1]:.3f} s/img, ours {timed['ours'][-1]:.3f} s/img, "
            f"ratio {timed['authors'][-1] / timed['ours'][-1]:.2f}; ours by stage {phases.describe(len(case.images))}",
            flush=True,
        )
    return timed | {"results": results, "solution": solution}


def _print_times(case: Case, authors: AuthorsSettings, ours: SolverSettings, timed: dict, repeats: int):
    """Per-image medians of both methods (and an estimate at the default steps when they were cut)."""
    a, b = statistics.median(timed["authors"]), statistics.median(timed["ours"])
    print(
        f"\n    per-image time, all {len(case.layers)} layers (median of {repeats}; ours is batched over images, so total/n):"
    )
    for i, image_name in enumerate(case.image_names):
        print(f"      {image_name:28s} authors {statistics.median(t[i] for t in timed['authors_images']):8.3f} s")
    print(f"      {'mean per image':28s} authors {a:8.3f} s   ours {b:8.3f} s   speedup authors/ours {a / b:.2f}x")
    cut = authors.steps != AuthorsSettings.steps or ours.steps != SolverSettings.steps
    if cut and "steps" in timed["ours_phases"][0].times:
        # Steps were cut for feasibility: scale the per-step parts to each method's default step count.
        phases = timed["ours_phases"][len(timed["ours_phases"]) // 2]
        per_step = phases.times.get("steps", 0.0) / max(phases.calls.get("steps", 1), 1) / len(case.images)
        ours_full = b + per_step * (SolverSettings.steps - ours.steps)
        authors_full = a * (AuthorsSettings.steps + 1) / (authors.steps + 1)  # + 1: the D0 batch
        print(
            f"      ESTIMATE at the default steps (authors {AuthorsSettings.steps}, ours {SolverSettings.steps}; per-step time scaled,"
            f" our init and measurement as measured): authors {authors_full:.3f} s/img, ours {ours_full:.3f} s/img,"
            f" speedup {authors_full / ours_full:.2f}x  (not a measurement)"
        )
    return a, b


def _print_quality(case: Case, results: dict, solution, tau: float) -> None:
    """Both methods' D/τ, budget met and CID per image and layer."""
    print(f"\n    quality (τ = {tau}; met = |D/τ − 1| ≤ {TOLERANCE}; D/τ measured on fresh noise; CID nats per value):")
    print(
        f"      {'image':18s} {'layer':42s} | {'authors D/τ':>14s} {'met':>3s} {'CID':>7s} {'D0/τ':>7s} {'pick':>4s} {'pick D/τ':>8s}"
        f" | {'ours D/τ':>14s} {'conv':>4s} {'CID':>7s} {'λ':>5s} {'n_eval':>6s}"
    )
    n = len(case.images)
    for j, layer in enumerate(case.layers):
        for i, image_name in enumerate(case.image_names):
            r = results[(i, layer)]
            row = j * n + i  # run_ours solves the rows layer by layer, images within each
            a_cid = float(r.log_sigma.mean()) + HALF_LOG_2PIE
            o_cid = float(solution.log_sigma[row].mean()) + HALF_LOG_2PIE
            a_met = abs(r.d_over_tau - 1) <= TOLERANCE
            print(
                f"      {image_name[:18]:18s} {layer[-42:]:42s} | {r.d_over_tau:7.3f}±{r.standard_error * r.d_over_tau:<6.3f} {_yn(a_met):>3s}"
                f" {a_cid:7.3f} {r.d0_over_tau:7.3f} {r.picked_step:4d} {r.picked_d_over_tau:8.3f}"
                f" | {solution.d_over_tau[row]:7.3f}±{solution.standard_error[row] * solution.d_over_tau[row]:<6.3f}"
                f" {_yn(bool(solution.converged[row])):>4s} {o_cid:7.3f} {solution.multiplier[row]:5.2f} {int(solution.eval_samples[row]):6d}"
            )
    print(
        "      (pick: the authors' step_result.py keeps the step whose training D/D0 is closest to 1.5; pick D/τ is"
        " that step's 8-sample training estimate)"
    )


def _yn(value: bool) -> str:
    return "yes" if value else "no"


def _parser() -> argparse.ArgumentParser:
    """What to run: device, models, images, repeats, steps; then how (`_add_solver_options`)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (one device per process)")
    p.add_argument(
        "--quick", action="store_true", help="only the shipped digits model, 4 images (< 5 min on 2 CPU cores)"
    )
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="images per model (default: digits 4 with --quick else 8; VGG/ResNet 1 on cpu, 8 on cuda)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats, methods alternating; medians reported (default 3 quick, else 1 on cpu / 3 on cuda)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="override the step count of BOTH methods (default: each its own, 100 and 100); for CPU feasibility only",
    )
    p.add_argument("--size", type=int, default=224, help="input size of the exported torchvision models (default 224)")
    p.add_argument(
        "--our-grid",
        type=int,
        default=None,
        help="σ grid for this project's solver (default: its default, full resolution)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=64,
        help="fresh noise samples to measure the authors' final D/τ (default 64)",
    )
    _add_solver_options(p)
    return p


def _add_solver_options(p: argparse.ArgumentParser) -> None:
    """Precision, layout, seed, stage timing, warm-up and threads."""
    p.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="autocast of this project's optimisation steps (default fp32; bf16 is the GPU candidate)",
    )
    p.add_argument(
        "--memory-format",
        default="auto",
        choices=MEMORY_FORMATS,
        help="activation layout of this project's solver (default auto: channels_last on cuda, contiguous on cpu)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split our time by solver stage (default on; on a GPU it adds one device sync per stage call)",
    )
    p.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="untimed warm-up run (default: on for cuda)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads (default 1 on cpu: on a shared, loaded machine two threads ran this"
        " workload 5-10x slower than one; 0 = torch's default)",
    )


def parse_args(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or "digits"
    args.models = [m.strip() for m in (args.models or ",".join(MODELS)).split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except InfodiscardError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    cuda = device.type == "cuda"
    if args.threads is None and not cuda:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup is None:
        args.warmup = cuda
    if args.repeats is None:
        args.repeats = 3 if (args.quick or cuda) else 1
    total_start = time.perf_counter()
    print(
        f"bench_vs_authors: device {_device_name(device)}; torch {torch.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {_version('onnxruntime')}, onnx2torch {_version('onnx2torch')}, python {platform.python_version()}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    lines, all_converged = [], True
    with tempfile.TemporaryDirectory(prefix="bench_vs_authors_") as tmp:
        for name in args.models:
            if name == "digits":
                n = args.images or (4 if args.quick else 8)
                case = digits_case(n)
            else:
                n = args.images or (8 if cuda else 1)
                case = torchvision_case(name, Path(tmp), n, args.size)
            line, converged = benchmark(case, device, args)
            lines.append(line)
            all_converged &= converged
            del case
    print(f"\ntotal wall time {time.perf_counter() - total_start:.1f} s")
    for line in lines:
        print(line)
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    threads = torch.get_num_threads()
    return f"cpu ({model}, {threads} torch thread{'s' if threads != 1 else ''}, {os.cpu_count()} logical cores)"


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (module, f"{module}-gpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "not installed"


if __name__ == "__main__":
    sys.exit(main())
