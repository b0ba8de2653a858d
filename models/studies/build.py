"""Deterministic build of the model-zoo study (issue #17): small CNNs trained on cluttered digits.

Run from the repository root (one CPU thread; the time is in README.md):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python models/studies/build.py

Trains, for each of SEEDS, on the cluttered-digits training stream of
``models/cluttered_digits/build.py`` (imported, not copied: the same digits split, photos,
distractors, normalisation, curriculum and image reuse; generated once, every model sees the same
EPOCHS x PER_EPOCH images in its own seeded order):

- ``shallow``: 2 conv stages; ``deep``: 6 conv stages (plain CNNs, same widths where they overlap);
- ``teacher``: a wider 6-stage CNN;
- ``student_scratch``: a 4-stage student trained on hard labels, and ``student_kd``: the same
  student, same seed, distilled from that seed's teacher (soft targets at temperature KD_T,
  loss = KD_ALPHA * T^2 * KL(teacher_T || student_T) + (1 - KD_ALPHA) * cross-entropy);
- ``pruned_50`` / ``pruned_80``: the teacher, global L1 magnitude pruning (``torch.nn.utils.prune``)
  of all conv and linear weights at that sparsity, fine-tuned FINETUNE_EPOCHS with the mask fixed;
- ``checkpoints``: the seed-0 deep model after each epoch of CHECKPOINTS (``ckpt_eK``; after the
  last epoch it is ``deep_s0`` itself), so accuracy varies within one architecture.

Every model is exported with the TorchScript exporter (opset 17) to ``zoo/NAME.onnx`` with a card
``zoo/NAME.onnx.json`` (the cluttered_digits card format, held-out accuracy on the 1000 held-out
images: test digits on test photos) and the card embedded in the file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

HERE = Path(__file__).resolve().parent
ZOO = HERE / "zoo"
SEEDS = (0, 1, 2)
EPOCHS = 30
PER_EPOCH = 4000  # training images per epoch (cluttered_digits' stream: a third of them fresh each epoch)
CHECKPOINTS = (1, 2, 4, 8, 16)  # epochs after which the seed-0 deep model is also exported
FINETUNE_EPOCHS = 3  # on the stream's last epochs (full difficulty)
BATCH = 32
LR = 3e-3  # one-cycle peak, as cluttered_digits
FINETUNE_LR = 1e-3
KD_T = 4.0
KD_ALPHA = 0.7
SPARSITIES = (0.5, 0.8)
TRAIN_SEED = 777  # which training digits the stream draws
OPSET = 17

# (out channels, kernel, stride) per stage; two stride-2 stages first (64x64 -> 16x16) so that the
# whole build fits a shared CPU
ARCHS = {
    "shallow": [(8, 5, 2), (16, 3, 2)],
    "deep": [(8, 5, 2), (16, 3, 2), (16, 3, 1), (32, 3, 2), (32, 3, 1), (32, 3, 1)],
    "teacher": [(12, 5, 2), (24, 3, 2), (32, 3, 1), (48, 3, 2), (48, 3, 1), (48, 3, 1)],
    "student": [(8, 5, 2), (16, 3, 2), (24, 3, 2), (32, 3, 1)],
}


def cluttered_build():
    """models/cluttered_digits/build.py as a module (its data generation, constants and helpers)."""
    spec = importlib.util.spec_from_file_location("cluttered_build", HERE.parent / "cluttered_digits" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CB = cluttered_build()


class PlainCNN(nn.Module):
    """Conv + BatchNorm + ReLU stages, global average pool, linear head; node names convK / reluK."""

    def __init__(self, stages: list[tuple[int, int, int]]) -> None:
        super().__init__()
        cin = 1
        for k, (cout, ks, stride) in enumerate(stages, start=1):
            setattr(self, f"conv{k}", nn.Conv2d(cin, cout, ks, stride=stride, padding=ks // 2, bias=False))
            setattr(self, f"bn{k}", nn.BatchNorm2d(cout))
            setattr(self, f"relu{k}", nn.ReLU())
            cin = cout
        self.n_stages = len(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for k in range(1, self.n_stages + 1):
            x = getattr(self, f"relu{k}")(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x)))
        return self.fc(self.flatten(self.pool(x)))


def batches(n: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for b in range(0, n, BATCH):
        yield perm[b : b + BATCH]


def run_epoch(
    model: nn.Module,
    opt,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    teacher: nn.Module | None = None,
    sched=None,
) -> float:
    """One epoch (the scheduler, if any, steps every batch); with a teacher, the distillation loss.
    Returns the mean training loss."""
    model.train()
    total = 0.0
    for sel in batches(len(x), gen):
        out = model(x[sel])
        loss = F.cross_entropy(out, y[sel])
        if teacher is not None:
            with torch.no_grad():
                soft = F.log_softmax(teacher(x[sel]) / KD_T, 1)
            kd = F.kl_div(F.log_softmax(out / KD_T, 1), soft, log_target=True, reduction="batchmean")
            loss = KD_ALPHA * KD_T**2 * kd + (1 - KD_ALPHA) * loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.item() * len(sel)
    return total / len(x)


def train(arch: str, seed: int, data: dict, teacher: nn.Module | None = None, on_epoch=None) -> nn.Module:
    """EPOCHS epochs of the training stream, AdamW with a one-cycle learning rate (as cluttered_digits)."""
    torch.manual_seed(seed)
    model = PlainCNN(ARCHS[arch])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = (PER_EPOCH + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps)
    for epoch, (x, y) in enumerate(data["stream"]):
        loss = run_epoch(model, opt, x, y, gen, teacher, sched)
        print(f"  {arch} seed {seed} epoch {epoch + 1}/{EPOCHS} loss {loss:.3f}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model.eval()


def pruned(teacher: nn.Module, sparsity: float, seed: int, data: dict) -> nn.Module:
    """Global L1 magnitude pruning of every conv/linear weight, then fine-tuning with the mask fixed."""
    model = PlainCNN(ARCHS["teacher"])
    model.load_state_dict(teacher.state_dict())
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    gen = torch.Generator().manual_seed(seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=FINETUNE_LR, weight_decay=0.0)
    for x, y in data["stream"][-FINETUNE_EPOCHS:]:
        run_epoch(model, opt, x, y, gen)
    for m, name in params:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params) / sum(m.weight.numel() for m, _ in params)
    print(f"  pruned {sparsity:.0%} seed {seed}: weight sparsity {zeros:.3f}", flush=True)
    return model.eval()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).argmax(1)
    model.train(was)
    return float((pred == y).float().mean())


def export(model: nn.Module, name: str, acc: float, data: dict, note: str) -> int:
    """ONNX + card; checks onnxruntime against torch. Returns the file size in bytes."""
    import copy

    model = copy.deepcopy(model).eval()
    path = ZOO / f"{name}.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, CB.SIZE, CB.SIZE),),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    CB.digits_cnn_build().verify_onnx(model, data["x_te"][:200], path, "image")
    relus = CB.digits_cnn_build().relu_outputs(path, "image")
    card = OrderedDict(
        [
            ("input", "image"),
            ("layout", "nchw"),
            ("preprocessing", {"scale": 1.0, "mean": [CB.MEAN], "std": [CB.STD], "bgr": False}),
            ("classes", [str(c) for c in range(10)]),
            ("test_accuracy", round(acc, 4)),
            ("n_test", int(len(data["y_te"]))),
            ("suggested_layers", relus),
            ("images", "../../cluttered_digits/images"),
            ("foreground_boxes", "../../cluttered_digits/images/boxes.csv"),
            ("exporter", f"torch.onnx.export(dynamo=False, opset_version={OPSET}), torch {torch.__version__}"),
            (
                "dataset",
                (
                    "cluttered digits (models/cluttered_digits/build.py training stream: "
                    f"{EPOCHS} epochs x {PER_EPOCH} images, its curriculum and reuse), test_accuracy on "
                    "the 1000 held-out images (test digits on test photos, the cluttered_digits held-out set)"
                ),
            ),
            ("description", note),
        ]
    )
    CB.digits_cnn_build().embed_card(path, card)
    (ZOO / f"{name}.onnx.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"  exported {name}: acc {acc:.3f}, {path.stat().st_size} bytes", flush=True)
    return path.stat().st_size


def make_data() -> dict:
    """The training stream (one (x, y) per epoch, generated once for every model) and the held-out set."""
    base = CB.digits_cnn_build()
    digits, y = base.load_data()
    train_idx, test_idx = base.split(y)
    train_src = CB.Source(
        digits[train_idx], CB.load_photos(CB.TRAIN_PHOTOS), CB.curve_bank(CB.N_CURVES, CB.CURVE_SEED), augment=True
    )
    test_src = CB.Source(
        digits[test_idx], CB.load_photos(CB.TEST_PHOTOS), CB.curve_bank(CB.N_CURVES, CB.CURVE_SEED + 1)
    )
    stream = CB.training_stream(digits[train_idx], y[train_idx], train_src, TRAIN_SEED, EPOCHS, PER_EPOCH)
    x_te, _ = CB.make_set(digits[test_idx], test_src, CB.DATA_SEED)
    x_te = CB.quantize(x_te).astype(np.float32) / 255.0  # as shipped (8-bit), like cluttered_digits
    return {
        "stream": [(x, labels) for x, labels, _ in stream],
        "x_te": CB.to_input(x_te),
        "y_te": torch.from_numpy(y[test_idx]),
    }


def save(model: nn.Module, name: str, data: dict, note: str) -> int:
    """Export a trained model with its held-out accuracy; its size in bytes."""
    return export(model, name, evaluate(model, data["x_te"], data["y_te"]), data, note)


def build_seed(seed: int, data: dict) -> list[int]:
    """Every model of one seed: plain shallow and deep (deep with per-epoch checkpoints for the first
    seed), the teacher, students from scratch and distilled, the pruned teachers. Their sizes."""
    sizes = []
    for arch in ("shallow", "deep"):

        def keep(epoch, model, arch=arch):
            if arch == "deep" and seed == SEEDS[0] and epoch in CHECKPOINTS:
                sizes.append(save(model, f"ckpt_e{epoch}", data, f"deep seed {seed} after epoch {epoch}"))

        model = train(arch, seed, data, on_epoch=keep)
        sizes.append(save(model, f"{arch}_s{seed}", data, f"{arch} plain CNN, seed {seed}"))
    teacher = train("teacher", seed, data)
    sizes.append(save(teacher, f"teacher_s{seed}", data, f"teacher, seed {seed}"))
    for kind, t in (("scratch", None), ("kd", teacher)):
        student = train("student", seed, data, teacher=t)
        note = f"student seed {seed}, " + ("hard labels" if t is None else f"distilled T={KD_T} alpha={KD_ALPHA}")
        sizes.append(save(student, f"student_{kind}_s{seed}", data, note))
    for sparsity in SPARSITIES:
        note = f"teacher seed {seed}, global L1 pruning {sparsity:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch"
        sizes.append(save(pruned(teacher, sparsity, seed, data), f"pruned_{round(sparsity * 100)}_s{seed}", data, note))
    return sizes


def main() -> int:
    t0 = time.time()
    CB.digits_cnn_build().seed_everything(0)  # one thread, deterministic algorithms
    ZOO.mkdir(exist_ok=True)
    data = make_data()
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    sizes = []
    for seed in SEEDS:
        sizes += build_seed(seed, data)
        print(f"seed {seed} done at {time.time() - t0:.0f} s", flush=True)
    print(f"{len(sizes)} models, {sum(sizes)} bytes in all; build time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
