"""`localize` (issue #7): the attribution maps, the model-free controls, and the command end to end.

The known-answer model looks at one region only (a mask after its first convolution), so every
model-based map must find that region while the controls, on noise images, cannot.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_analyze import assert_one_line_error, infodiscard
from torch import nn

from onnx_infodiscard.attribution import Classifier, control_map, model_map
from onnx_infodiscard.check import prepare
from onnx_infodiscard.embedded import BENCHMARK_MODEL, DEFAULT_MODEL
from onnx_infodiscard.localization import iou
from onnx_infodiscard.localize import localize
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard.preprocess import Preprocess, Preprocessing

SIZE = 40
REGION = (20, 6, 34, 20)  # x0, y0, x1, y1: the only pixels the known-answer model uses
QUICK = SolverSettings(steps=40, samples=8)


class LooksAtOneRegion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        mask = torch.zeros(1, 1, SIZE, SIZE)
        x0, y0, x1, y1 = REGION
        mask[..., y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = 1.0  # the conv's halo reaches one pixel further
        self.register_buffer("mask", mask)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():  # positive weights: smooth, positive activations and Grad-CAM weights in the region
            self.conv.weight.uniform_(0.5 / 9, 1.0 / 9)
            self.conv.bias.fill_(0.1)
            self.head.weight.uniform_(0.1, 1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(image)) * self.mask
        return self.head(features.mean((2, 3)))


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> Path:
    """The model, 6 bright noise images and their boxes (all REGION), in one folder."""
    folder = tmp_path_factory.mktemp("known")
    model = LooksAtOneRegion().eval()
    torch.onnx.export(
        model,
        (torch.rand(1, 1, SIZE, SIZE),),
        str(folder / "region.onnx"),
        dynamo=False,
        opset_version=13,
        input_names=["image"],
        output_names=["logits"],
    )
    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir()
    with open(folder / "boxes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "x0", "y0", "x1", "y1"])
        for i in range(6):
            Image.fromarray(rng.integers(150, 256, (SIZE, SIZE), dtype=np.uint8)).save(images / f"noise_{i}.png")
            writer.writerow([f"noise_{i}.png", *REGION])
    return folder


def mul_layer(path: Path) -> str:
    import onnx

    return next(node.output[0] for node in onnx.load(str(path)).graph.node if node.op_type == "Mul")


def test_every_model_map_finds_the_only_region_the_model_uses(known):
    model = known / "region.onnx"
    result = localize(model, [known / "images"], known / "boxes.csv", [mul_layer(model)], settings=QUICK, device="cpu")
    scores = {m.name: m for m in result.methods}
    for name in ("cid", "gradcam", "gradient", "ig"):
        assert scores[name].loc_acc == 1.0, (name, [image.boxes[name] for image in result.images])
        assert scores[name].loc_acc_cv == 1.0 and scores[name].cv_fractions == (0.5,) * 5, name
        assert scores[name].pointing_acc == 1.0, name
        assert scores[name].deletion_images == 6 and 0 <= scores[name].deletion_auc <= 1, name
    for name in ("brightness", "contrast", "edges"):  # noise images: the pixels say nothing about the region
        assert scores[name].loc_acc == 0.0, name
    assert result.controls_beaten and "every model-free control scores below" in result.verdict
    assert "cross-validation" in result.verdict and result.grid_choice == {}
    assert result.protocol["folds"] == 5 and result.protocol["grids"] == ["pixel"]
    assert result.protocol["target"].startswith("the model's predicted class")
    assert [m.name for m in result.methods][:4] == ["cid", "gradcam", "gradient", "ig"]


def test_grids_are_scored_each_and_chosen_by_cross_validation(known):
    model = known / "region.onnx"
    result = localize(
        model,
        [known / "images"],
        known / "boxes.csv",
        [mul_layer(model)],
        methods=["cid"],
        controls=[],
        settings=QUICK,
        device="cpu",
        grids=(None, 10),
        folds=3,
    )
    scores = {m.name: m for m in result.methods}
    assert set(scores) == {"cid@pixel", "cid@grid10"}
    assert scores["cid@pixel"].grid is None and scores["cid@grid10"].grid == 10
    coarse = result.maps["cid@grid10"][0]  # 40 px on a 10×10 lattice: constant on 4×4 cells
    assert np.ptp(coarse.reshape(10, 4, 10, 4), axis=(1, 3)).max() == 0 and np.ptp(result.maps["cid@pixel"][0]) > 0
    choice = result.grid_choice["cid"]
    assert choice["candidates"] == ["cid@pixel", "cid@grid10"] and len(choice["chosen"]) == 3
    assert choice["loc_acc_cv"] == 1.0 and {c["grid"] for c in choice["chosen"]} <= {None, 10}
    assert result.protocol["grids"] == ["pixel", 10] and "jointly" in result.protocol["grid_rule"]
    assert "cid (grid chosen by CV) 1.000" in result.verdict
    assert result.summary_json()["grid_choice"] == result.grid_choice


@pytest.mark.parametrize("bad", [{"grids": (0,)}, {"grids": (None, 2.5)}, {"folds": 1}])
def test_bad_grids_and_folds_name_their_argument(known, bad):
    from onnx_infodiscard.errors import InputError

    with pytest.raises(InputError) as caught:
        localize(
            known / "region.onnx",
            [known / "images"],
            known / "boxes.csv",
            methods=["gradient"],
            controls=[],
            device="cpu",
            **bad,
        )
    assert caught.value.option == next(iter(bad))


def test_gradcam_probe_matches_gradcam_from_the_layer_gradient():
    """The probe inserted after the layer sees exactly the layer's activations and gradients."""
    layer = "/relu3/Relu_output_0"
    prepared = prepare(DEFAULT_MODEL, [layer, "logits"])
    preprocess = Preprocess(Preprocessing(mean=(0.1307,), std=(0.3081,)), 1)
    classifier = Classifier(preprocess, prepared.module, [layer])
    images = torch.rand(3, 1, 28, 28)
    targets = [1, 4, 7]
    ours = model_map("gradcam", classifier, images, targets, layer)

    x = images.clone().requires_grad_(True)
    features = prepared.module(preprocess(x))
    activation = features[layer]
    assert torch.allclose(classifier(images), features["logits"], atol=1e-5)
    picked = features["logits"][torch.arange(3), targets].sum()
    (gradient,) = torch.autograd.grad(picked, activation)
    cam = torch.relu((gradient.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(cam, (28, 28), mode="bilinear").squeeze(1).detach().numpy()
    assert ours.shape == (3, 28, 28)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_controls_peak_where_their_rule_says():
    image = np.zeros((1, 24, 24), dtype=np.float32)
    image[:, 4:10, 14:20] = 1.0  # a bright square
    assert control_map("brightness", image)[6, 16] == 1.0
    edges = control_map("edges", image)
    assert edges[7, 14] > 0 and edges[7, 16] == 0 and edges[20, 4] == 0  # on the square's border only
    contrast = control_map("contrast", image)
    assert contrast[4, 14] > contrast[7, 17] and contrast[20, 4] == 0
    center = control_map("center", image)
    assert np.unravel_index(center.argmax(), center.shape) in {(11, 11), (11, 12), (12, 11), (12, 12)}


@pytest.fixture(scope="module")
def benchmark_subset(tmp_path_factory) -> Path:
    """Six images of the shipped benchmark with their rows of boxes.csv (labels included)."""
    folder = tmp_path_factory.mktemp("bench")
    source = BENCHMARK_MODEL.parent / "images"
    with open(source / "boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:6]
    for row in rows:
        (folder / row["file"]).write_bytes((source / row["file"]).read_bytes())
    with open(folder / "boxes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_the_benchmark_runs_end_to_end_through_the_cli(benchmark_subset, tmp_path):
    out = tmp_path / "loc"
    result = infodiscard(
        "localize",
        "--images",
        str(benchmark_subset),
        "--boxes",
        str(benchmark_subset / "boxes.csv"),
        "--steps",
        "20",
        "--samples",
        "8",
        "--overlays",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 6 and summary["protocol"]["target"] == "the label column of the boxes CSV"
    assert set(summary["methods"]) == {"cid", "gradcam", "gradient", "ig", "brightness", "contrast", "edges", "center"}
    for scores in summary["methods"].values():
        assert 0 <= scores["loc_acc"] <= 1 and 0 <= scores["pointing_acc"] <= 1
        assert scores["deletion_auc"] >= 0 and len(scores["deletion_curve"]) == 21
        assert 0 <= scores["loc_acc_cv"] <= 1 and scores["loc_acc_cv_se"] >= 0 and len(scores["cv_fractions"]) == 5
        assert "deletion_auc_normalised" in scores and scores["deletion_images"] <= 6
    assert "cross-validation" in summary["protocol"]["thresholds"] and summary["protocol"]["grids"] == ["pixel"]
    assert isinstance(summary["verdict"], str) and summary["verdict"]
    files = {p.name for p in out.iterdir()}
    assert {"localization.json", "methods.csv", "images.csv", "maps.npz", "localization.png", "overlays"} <= files
    assert len(list((out / "overlays").glob("*.png"))) == 2
    with np.load(out / "maps.npz") as maps:
        assert maps["cid"].shape == (6, 64, 64)
    with open(out / "images.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6 * 8


def test_bad_input_is_one_line_and_writes_nothing(benchmark_subset, tmp_path):
    out = tmp_path / "never"
    base = ["localize", "--images", str(benchmark_subset), "--out", str(out)]
    assert_one_line_error(
        infodiscard(*base, "--boxes", str(benchmark_subset / "boxes.csv"), "--methods", "cid,gradcm"),
        2,
        "gradcm",
        "did you mean 'gradcam'",
    )
    partial = tmp_path / "partial.csv"
    lines = (benchmark_subset / "boxes.csv").read_text().splitlines()
    partial.write_text("\n".join(lines[:-1]) + "\n")
    assert_one_line_error(infodiscard(*base, "--boxes", str(partial)), 2, "no box for 1 of the images")
    bad_label = tmp_path / "labels.csv"
    bad_label.write_text(lines[0] + "\n" + "\n".join(line.rsplit(",", 1)[0] + ",seven" for line in lines[1:]) + "\n")
    assert_one_line_error(infodiscard(*base, "--boxes", str(bad_label)), 2, "label 'seven'")
    assert not out.exists()


def test_truth_boxes_are_scaled_to_the_model_resolution(known, tmp_path):
    """Images twice the model's size: their boxes (in file pixels) shrink with them."""
    images = tmp_path / "big"
    images.mkdir()
    rows = [["file", "x0", "y0", "x1", "y1"]]
    for path in sorted((known / "images").glob("*.png"))[:2]:
        Image.open(path).resize((2 * SIZE, 2 * SIZE), Image.NEAREST).save(images / path.name)
        rows.append([path.name, *(2 * v for v in REGION)])
    with open(tmp_path / "big.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    result = localize(
        known / "region.onnx",
        [images],
        tmp_path / "big.csv",
        [mul_layer(known / "region.onnx")],
        methods=["gradient"],
        controls=[],
        settings=QUICK,
        device="cpu",
    )
    assert all(iou(image.truth, REGION) == 1.0 for image in result.images)
    assert "no model-free control was run" in result.verdict
