"""Time and memory of `analyze` at 224×224 on the CPU: torchvision ResNet-50, VGG-16, MobileNetV3 and ViT-B/16.

    nice -n 10 python benchmarks/bench_224.py --steps 10 --samples 4 --threads 1 > bench_224.md

Each network (random weights, `weights=None`: time and memory do not depend on them) is exported
to ONNX with the TorchScript exporter (opset 17) in a temporary folder, then analysed on one
224×224 photo (scikit-image's astronaut, resized) at `--layer auto`, each in its own subprocess so
that the peak resident memory (`Report.peak_memory`, which includes the export) is that network's alone.
Prints a Markdown table: seconds of `analyze` (after the export), peak RSS, rows converged, and
what `auto` chose (shapes, layouts, its note). A reduced step count makes the time a lower bound
of a default run (100 steps × 16 samples), roughly proportional to steps × samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

NETWORKS = ("resnet50", "vgg16", "mobilenet_v3_large", "vit_b_16")


def photo(folder: Path) -> Path:
    """A real 224×224 photo: scikit-image's astronaut when it is installed, else a smooth gradient."""
    import numpy as np
    from PIL import Image

    try:
        import skimage

        image = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB")
    except ImportError:
        ramp = np.linspace(0, 255, 224, dtype=np.uint8)
        image = Image.fromarray(np.stack([np.tile(ramp, (224, 1))] * 3, -1))
    path = folder / "photo.png"
    image.resize((224, 224), Image.BILINEAR).save(path)
    return path


def export(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)  # a script, not the library: the global seed is ours to set
    model = getattr(torchvision.models, name)(weights=None).eval()
    # Not under torch.no_grad(): there torchvision's ViT takes the fused attention fast path
    # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
        )


def one(args: argparse.Namespace) -> dict:
    """Export and analyse one network in this process; a JSON-able row."""
    import torch

    from onnx_infodiscard.analysis import analyze
    from onnx_infodiscard.check import open_model
    from onnx_infodiscard.layers import list_layers, selection
    from onnx_infodiscard.perturb import SolverSettings

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = folder / f"{args.one}.onnx"
        start = time.perf_counter()
        export(args.one, model)
        export_s = time.perf_counter() - start
        notes = selection(list_layers(open_model(model)[1]), ["auto"]).notes
        settings = SolverSettings(
            steps=args.steps, samples=args.samples, max_eval_samples=args.max_eval_samples, extra_steps=args.extra_steps
        )
        start = time.perf_counter()
        report = analyze(
            model,
            [photo(folder)],
            ["auto"],
            settings=settings,
            device="cpu",
            preprocessing_overrides={"preset": "imagenet"},
        )
        seconds = time.perf_counter() - start
    return {
        "network": args.one,
        "export_s": round(export_s, 1),
        "analyze_s": round(seconds, 1),
        "peak_rss_mb": round((report.peak_memory or 0) / 2**20),
        "rows": len(report.results),
        "converged": sum(r.converged for r in report.results),
        "d_over_tau": [round(r.d_over_tau, 3) for r in report.results],
        "layers": [
            {"name": layer.name, "shape": list(layer.shape or ()), "layout": layer.layout} for layer in report.layers
        ],
        "auto_notes": list(notes),
        "crosscheck_tolerances": [a.tolerance for a in report.crosscheck.layers],
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/bench_224.py --steps {args.steps} --samples {args.samples} --threads {args.threads} "
        f"--max-eval-samples {args.max_eval_samples} --extra-steps {args.extra_steps}` "
        "(one 224×224 image, `--layer auto`, CPU)",
        "",
        "| network | layers (auto) | analyze s | peak RSS MB | rows converged | export s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['network']} | failed: {row['error']} | | | | |")
            continue
        shapes = ", ".join(f"{'×'.join(map(str, layer['shape'][1:]))} {layer['layout']}" for layer in row["layers"])
        lines.append(
            f"| {row['network']} | {len(row['layers'])}: {shapes} | {row['analyze_s']} | "
            f"{row['peak_rss_mb']} | "
            f"{row['converged']}/{row['rows']} | {row['export_s']} |"
        )
    notes = [f"- {row['network']}: {note}" for row in rows for note in row.get("auto_notes", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps (default 10; default run 100)")
    parser.add_argument("--samples", type=int, default=4, help="noise samples per step (default 4; default run 16)")
    parser.add_argument("--max-eval-samples", type=int, default=256, help="cap of the final D/τ estimate's samples")
    parser.add_argument("--extra-steps", type=int, default=0, help="steps beyond --steps for an off-budget row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (torch.set_num_threads)")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one network in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for name in args.networks:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--samples",
            str(args.samples),
            "--threads",
            str(args.threads),
            "--max-eval-samples",
            str(args.max_eval_samples),
            "--extra-steps",
            str(args.extra_steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            rows.append({"network": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows, args))


if __name__ == "__main__":
    main()
