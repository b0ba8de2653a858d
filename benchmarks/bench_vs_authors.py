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
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image

from onnx_infodiscard.errors import InfodiscardError
from onnx_infodiscard.images import CanonicalImage, find_images, load_images
from onnx_infodiscard.metrics import HALF_LOG_2PIE
from onnx_infodiscard.perturb import MEMORY_FORMATS, PRECISIONS, Distortion, SolverSettings, resolve_device, solve
from onnx_infodiscard.preprocess import PRESETS, Preprocessing, canonical_shape, read_card, resolve_preprocessing
from onnx_infodiscard.session import open_session

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn" / "digits_cnn.onnx"
MODELS = ("digits", "vgg16", "resnet50")
TOLERANCE = 0.05  # |D/τ − 1| for "met the budget", as METHOD §4


@dataclass(frozen=True)
class AuthorsSettings:
    """The authors' defaults (`main.py`: capability_*), noise moved to the canonical space."""

    grid: int = 16  # capability_sigma_size
    samples: int = 8  # capability_batch_size
    lr: float = 1e-4  # capability_lr_x
    multiplier: float = 5.0  # capability_lambda_init_x, fixed (the schedule is commented out)
    steps: int = 100  # capability_epoch
    sigma_init: float = 0.01  # capability_sigma_init_decay
    pick_target: float = 1.5  # result_distance_clip: step_result.py keeps the step with D/D0 closest to it


# -- the two methods ------------------------------------------------------------------------------


@dataclass
class AuthorsResult:
    log_sigma: np.ndarray  # (H, W), full resolution
    d_over_tau: float  # final σ, fresh noise
    standard_error: float  # relative
    d0_over_tau: float  # D at the initial σ (their normaliser sigma_f), over τ
    final_loss_ratio: float  # D/D0 of the last training step
    picked_step: int  # the authors' own pick: the step whose D/D0 was closest to 1.5
    picked_d_over_tau: float  # its D/τ, from that step's 8-sample training estimate
    seconds: float


def authors_loop(
    feature, image: torch.Tensor, scale: torch.Tensor, a: AuthorsSettings, generator: torch.Generator
) -> tuple[torch.Tensor, list[float], float]:
    """One image, one layer, as `step_capability_x.py` does it. Returns (σ grid, D/D0 per step, D0).

    Our reading of their missing `model/noise_layer`: the parameter is σ itself (1, 1, 16, 16),
    initialised to `sigma_init_decay` everywhere (their result scripts take `log(param)` and
    `log(param²)` as the entropy, so the parameter is σ, not log σ); the noisy image is
    `x + upsample_nearest(σ)·ε`; the penalty is the mean entropy per value,
    mean(log σ) + ½ log 2πe, so its gradient is λ/(n·σ) (a mean of log σ² would only double λ).
    Their loss, `MSE(f', f)/sigma_f − λ·penalty`, where `sigma_f` is the distortion of one noise
    batch at the initial σ, is used with D of METHOD §3 in place of their MSE: the features here
    (max-pool and ReLU outputs) are non-negative, so their extra ReLU is the identity and
    MSE/MSE₀ = D/D₀ exactly. As in their loop, the clean feature is recomputed at every step and
    D₀ comes from one batch at the start. Departures (all in the authors' favour or neutral):
    the network's weights are frozen (no weight gradients), nothing is written to disk per step,
    and the noise is in the canonical [0, 1] space instead of after mean/std normalisation.
    """
    _, c, h, w = image.shape
    grid = (min(a.grid, h), min(a.grid, w))
    sigma = torch.full((1, 1, *grid), a.sigma_init, device=image.device, requires_grad=True)
    optimiser = torch.optim.SGD([sigma], lr=a.lr)

    def distortion(noise: torch.Tensor) -> torch.Tensor:
        clean = feature(image).float()  # recomputed each step, as in their loop
        noisy = image + F.interpolate(sigma, size=(h, w), mode="nearest") * noise
        return ((feature(noisy).float() - clean) ** 2).flatten(1).sum(1).mean() / scale

    with torch.no_grad():
        d0 = distortion(torch.randn((a.samples, c, h, w), generator=generator, device=image.device))
    ratios = []
    for _ in range(a.steps):
        noise = torch.randn((a.samples, c, h, w), generator=generator, device=image.device)
        ratio = distortion(noise) / d0
        loss = ratio - a.multiplier * (torch.log(sigma).mean() + HALF_LOG_2PIE)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        ratios.append(ratio.detach())
    return sigma.detach(), [float(r) for r in ratios], float(d0)


def run_authors(
    case, features, settings: AuthorsSettings, tau: float, eval_samples: int, device, seed: int, measure: bool
):
    """Every (image, layer) one after the other. Returns ({(i, layer): AuthorsResult}, seconds per image)."""
    results, per_image = {}, []
    for i in range(len(case.images)):
        image = case.images[i : i + 1].to(device)
        image_seconds = 0.0
        for j, layer in enumerate(case.layers):
            feature = features[layer]
            generator = torch.Generator(device=device).manual_seed(seed + 1000 * i + j)
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():  # N·s² of the clean feature, as Distortion computes it (METHOD §3)
                reference = feature(image).float()
                scale = reference.numel() * reference.double().var(unbiased=False).float()
            sigma, ratios, d0 = authors_loop(feature, image, scale, settings, generator)
            _sync(device)
            seconds = time.perf_counter() - start
            image_seconds += seconds
            if not measure:
                continue
            h, w = image.shape[-2:]
            log_sigma = torch.log(F.interpolate(sigma, size=(h, w), mode="nearest").clamp_min(1e-12))
            ratio, se = measure_fixed(feature, image, reference, scale, log_sigma, tau, eval_samples, generator)
            pick = int(np.argmin(np.abs(np.array(ratios) - settings.pick_target)))
            results[(i, layer)] = AuthorsResult(
                log_sigma=log_sigma[0, 0].cpu().numpy(),
                d_over_tau=ratio,
                standard_error=se,
                d0_over_tau=d0 / tau,
                final_loss_ratio=ratios[-1],
                picked_step=pick,
                picked_d_over_tau=ratios[pick] * d0 / tau,
                seconds=seconds,
            )
        per_image.append(image_seconds)
    return results, per_image


def measure_fixed(feature, image, reference, scale, log_sigma, tau, samples, generator, chunk: int = 16):
    """D/τ of a fixed σ map on `samples` fresh noise draws: (mean, relative standard error)."""
    c, h, w = image.shape[1:]
    values = []
    with torch.no_grad():
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            noise = torch.randn((k, c, h, w), generator=generator, device=image.device)
            noisy = image + torch.exp(log_sigma) * noise
            values.append(((feature(noisy).float() - reference) ** 2).flatten(1).sum(1) / scale / tau)
    values = torch.cat(values).double()
    mean = float(values.mean())
    return mean, float(values.std(unbiased=True) / math.sqrt(len(values)) / max(mean, 1e-300))


def run_ours(case, features, settings: SolverSettings, device, stages: bool = True):
    """This project's solver on every row at once: one Distortion, one solve (`analyze` solves the
    same rows in groups of one device batch; with row-local noise a row's numbers are the same).

    Returns (solution, seconds, phases): `phases` splits the time by the solver's stages where
    they can be found (see `PhaseTimer`); it is informational and does not change the run.
    """
    names = list(case.layers)
    n = len(case.images)
    with PhaseTimer(device, stages) as phases:
        _sync(device)
        start = time.perf_counter()
        images = case.images.to(device)
        image_of_row = [i for _ in names for i in range(n)]
        layer_of_row = [name for name in names for _ in range(n)]
        settings = settings.on(device)  # as analyze does: `auto` choices made for the device
        distortion = Distortion(features, images, image_of_row, layer_of_row, case.image_names, settings.memory_format)
        solution = solve(distortion, settings)
        _sync(device)
        seconds = time.perf_counter() - start
    phases.times["other"] = seconds - sum(phases.times.values())
    return solution, seconds, phases


class PhaseTimer:
    """Times the stages of `onnx_infodiscard.perturb.Solver` by wrapping its methods for the
    duration of one solve: `init` (the uniform start on the constraint), `steps` (every
    optimisation step's forward and backward), `measure` (projection onto D = τ and the final
    measurement on fresh noise); `other` is the rest (Distortion set-up, optimiser, Python).
    Stages the solver no longer has are skipped, so a refactored solver still runs here."""

    STAGES = {"_initial_log_sigma": "init", "_accumulate_gradient": "steps", "_project_and_measure": "measure"}

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.enabled = enabled  # off: time nothing (the wrappers synchronise the device once per stage call)
        self.times: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._saved: list = []

    def __enter__(self):
        from onnx_infodiscard import perturb

        solver = getattr(perturb, "Solver", None) if self.enabled else None
        for method, stage in self.STAGES.items():
            original = getattr(solver, method, None) if solver is not None else None
            if original is None:
                continue
            self._saved.append((solver, method, original))
            setattr(solver, method, self._timed(original, stage))
        return self

    def __exit__(self, *exc):
        for owner, method, original in self._saved:
            setattr(owner, method, original)

    def _timed(self, original, stage):
        def wrapper(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
                self.calls[stage] = self.calls.get(stage, 0) + 1

        return wrapper

    def describe(self, images: int) -> str:
        if not self.enabled:
            return "not timed (--no-stages)"
        parts = [f"{stage} {seconds / images:.3f}" for stage, seconds in self.times.items()]
        steps = self.calls.get("steps")
        if steps:
            parts.append(f"({self.times['steps'] / steps / images:.4f} per step, {steps} steps)")
        return "s/img: " + ", ".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- models and images ----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: Path
    layers: list[str]
    preprocessing: Preprocessing
    images: torch.Tensor  # (n, C, H, W) canonical, on the CPU
    image_names: list[str]
    notes: list[str] = field(default_factory=list)


def digits_case(n_images: int) -> Case:
    """The shipped model, its card's preprocessing and suggested layers, its first images by name."""
    proto = onnx.load(str(DIGITS), load_external_data=False)
    card = read_card(DIGITS, proto)
    dims = [
        d.dim_value for d in next(i for i in proto.graph.input if i.name == card["input"]).type.tensor_type.shape.dim
    ]
    shape = (1, *dims[1:])
    preprocessing = resolve_preprocessing(card, shape)
    files = find_images([DIGITS.parent / card["images"]])[:n_images]
    canonical = load_images(files, canonical_shape(shape, preprocessing.layout))
    images = torch.from_numpy(np.stack([c.pixels for c in canonical]))
    return Case(
        "digits_cnn", DIGITS, list(card["suggested_layers"]), preprocessing, images, [c.name for c in canonical]
    )


def torchvision_case(name: str, folder: Path, n_images: int, size: int) -> Case:
    """A torchvision architecture with random weights (seeded), exported to ONNX (opset 17, legacy
    exporter, dynamic batch), and the layers by their ONNX tensor names: VGG-16's five max-pool
    outputs, ResNet-50's four stage outputs (the last tensor of each `/layerK/` block)."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}_random_{size}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(1, 3, size, size),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    del model
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if name == "vgg16":
        layers = [n.output[0] for n in nodes if n.op_type == "MaxPool"]
    else:
        layers = [[n.output[0] for n in nodes if n.output[0].startswith(f"/layer{k}/")][-1] for k in range(1, 5)]
    images, names, source = real_images(n_images, size)
    label = name if size == 224 else f"{name}-{size}px"
    return Case(label, path, layers, PRESETS["imagenet"], images, names, [f"images: {source}"])


def real_images(n: int, size: int) -> tuple[torch.Tensor, list[str], str]:
    """scikit-learn's two bundled photographs (china, flower) and, beyond two, deterministic crops of
    them (left, right, centre halves), resized bilinearly to size×size; a synthetic image without sklearn."""
    try:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        sources = [(Path(f).stem, img) for f, img in zip(photos.filenames, photos.images)]
        what = "sklearn load_sample_images (china.jpg, flower.jpg) and crops of them"
    except Exception:  # no sklearn: a deterministic synthetic scene
        yy, xx = np.mgrid[0:427, 0:640] / 427.0
        synthetic = np.stack(
            [np.sin(6 * xx) * 0.5 + 0.5, (xx * yy) % 1.0, ((xx - 0.7) ** 2 + (yy - 0.5) ** 2 < 0.1) * 1.0], -1
        )
        sources = [("synthetic", (synthetic * 255).astype(np.uint8))]
        what = "a deterministic synthetic image and crops of it (sklearn not installed)"
    crops = [
        ("full", lambda a: a),
        ("left", lambda a: a[:, : a.shape[1] // 2]),
        ("right", lambda a: a[:, a.shape[1] // 2 :]),
        ("centre", lambda a: a[a.shape[0] // 4 : 3 * a.shape[0] // 4, a.shape[1] // 4 : 3 * a.shape[1] // 4]),
    ]
    out, names = [], []
    for crop_name, crop in crops:
        for stem, array in sources:
            if len(out) == n:
                break
            resized = Image.fromarray(np.ascontiguousarray(crop(array))).resize((size, size), Image.Resampling.BILINEAR)
            out.append(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            names.append(f"{stem}_{crop_name}")
    while len(out) < n:  # more images than crops: cycle with a horizontal flip
        out.append(out[len(out) % len(sources)][:, :, ::-1].copy())
        names.append(names[len(names) % len(sources)] + f"_flip{len(out)}")
    return torch.from_numpy(np.stack(out)), names, what


# -- the benchmark --------------------------------------------------------------------------------


def benchmark(case: Case, device: torch.device, args) -> tuple[str, bool]:
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
    features = {name: session.pipeline(name) for name in case.layers}
    print(
        f"    prepared in {session.seconds:.1f} s (untimed); cross-check: {session.crosscheck.provider}, "
        f"passed={session.crosscheck.passed}; batch_safe={session.conversion.batch_safe}"
    )
    for layer in session.layers:
        print(f"    layer {layer.index:4d} {layer.name}  {layer.op_type} {layer.shape}")

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

    authors_times, ours_times, authors_image_times, ours_phases = [], [], [], []
    for repeat in range(args.repeats):
        measure = repeat == args.repeats - 1
        results, per_image = run_authors(
            case, features, authors, ours.tau, args.eval_samples, device, args.seed, measure
        )
        authors_times.append(sum(per_image) / len(per_image))
        authors_image_times.append(per_image)
        solution, seconds, phases = run_ours(case, features, ours, device, args.stages)
        ours_times.append(seconds / len(case.images))
        ours_phases.append(phases)
        print(
            f"    repeat {repeat + 1}/{args.repeats}: authors {authors_times[-1]:.3f} s/img, ours {ours_times[-1]:.3f} s/img, "
            f"ratio {authors_times[-1] / ours_times[-1]:.2f}; ours by stage {phases.describe(len(case.images))}",
            flush=True,
        )

    a, b = statistics.median(authors_times), statistics.median(ours_times)
    print(
        f"\n    per-image time, all {len(case.layers)} layers (median of {args.repeats}; ours is batched over images, so total/n):"
    )
    for i, image_name in enumerate(case.image_names):
        print(f"      {image_name:28s} authors {statistics.median(t[i] for t in authors_image_times):8.3f} s")
    print(f"      {'mean per image':28s} authors {a:8.3f} s   ours {b:8.3f} s   speedup authors/ours {a / b:.2f}x")
    if (authors.steps != AuthorsSettings.steps or ours.steps != SolverSettings.steps) and "steps" in ours_phases[
        0
    ].times:
        # Steps were cut for feasibility: scale the per-step parts to each method's default step count.
        phases = ours_phases[len(ours_phases) // 2]
        per_step = phases.times.get("steps", 0.0) / max(phases.calls.get("steps", 1), 1) / len(case.images)
        ours_full = b + per_step * (SolverSettings.steps - ours.steps)
        authors_full = a * (AuthorsSettings.steps + 1) / (authors.steps + 1)  # + 1: the D0 batch
        print(
            f"      ESTIMATE at the default steps (authors {AuthorsSettings.steps}, ours {SolverSettings.steps}; per-step time scaled,"
            f" our init and measurement as measured): authors {authors_full:.3f} s/img, ours {ours_full:.3f} s/img,"
            f" speedup {authors_full / ours_full:.2f}x  (not a measurement)"
        )

    print(
        f"\n    quality (τ = {ours.tau}; met = |D/τ − 1| ≤ {TOLERANCE}; D/τ measured on fresh noise; CID nats per value):"
    )
    print(
        f"      {'image':18s} {'layer':42s} | {'authors D/τ':>14s} {'met':>3s} {'CID':>7s} {'D0/τ':>7s} {'pick':>4s} {'pick D/τ':>8s}"
        f" | {'ours D/τ':>14s} {'conv':>4s} {'CID':>7s} {'λ':>5s} {'n_eval':>6s}"
    )
    n = len(case.images)
    for j, layer in enumerate(case.layers):
        for i, image_name in enumerate(case.image_names):
            r = results[(i, layer)]
            row = j * n + i
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


def _yn(value: bool) -> str:
    return "yes" if value else "no"


def parse_args(argv=None):
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
