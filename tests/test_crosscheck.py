"""The cross-check against onnxruntime: a tolerance calibrated per layer on the graph's own float32
sensitivity, an explicit criterion, and real conversion errors still caught."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphs as G
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_infodiscard.check import open_model, prepare
from onnx_infodiscard.convert import convert
from onnx_infodiscard.crosscheck import (
    DEFAULT_RTOL,
    MAX_RTOL,
    SAFETY,
    SCALE_FLOOR,
    cross_check,
    judge,
    ort_session,
    sensitivity,
)
from onnx_infodiscard.errors import ConversionError
from onnx_infodiscard.layers import list_layers, select_layers


def ill_conditioned_graph() -> onnx.ModelProto:
    """y = Relu(1000·x − 1000) on inputs x = 1 + 1e-3·r: a relative change of x is amplified ~1000×
    in y, as through a deep network, so rounding-scale changes move y by more than 1e-4."""
    k = numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "k")
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["kx"], name="scale"),
        helper.make_node("Sub", ["kx", "k"], ["d"], name="difference"),
        helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
        [k],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session, _, _ = ort_session(model, prefer_cuda=False)
    return session.run(["y"], {"x": x})[0]


def test_tolerance_is_calibrated_on_the_graphs_own_rounding():
    """A disagreement of 3× the graph's float32 sensitivity is rounding: it passes with calibration
    (where the fixed 1e-4 would refuse it), and the layer reports the tolerance it used."""
    model = ill_conditioned_graph()
    x = (1 + 1e-3 * np.random.default_rng(0).random((1, 1, 16, 16))).astype(np.float32)
    want = _reference(model, x)
    observed, _ = sensitivity(model, "x", x, {"y": want.astype(np.float64)})["y"]
    assert observed > DEFAULT_RTOL / SAFETY  # the graph really is this sensitive
    noise = np.random.default_rng(1).standard_normal(want.shape)
    got = want + 3 * observed * np.linalg.norm(want) * noise / np.linalg.norm(noise)
    features = {"y": torch.from_numpy(got.astype(np.float32))}
    fixed = cross_check(model, "x", features, x, calibrate=False)
    calibrated = cross_check(model, "x", features, x)
    assert not fixed.passed and calibrated.passed
    (layer,) = calibrated.layers
    assert layer.criterion == "relative_l2" and layer.node_name == "relu"
    assert layer.tolerance == pytest.approx(min(SAFETY * layer.sensitivity, MAX_RTOL))
    assert DEFAULT_RTOL < layer.tolerance <= MAX_RTOL and layer.rel_l2_error <= layer.tolerance


@pytest.fixture(scope="module")
def resnet_path(tmp_path_factory):
    return G.export(G.ResNetLike(), tmp_path_factory.mktemp("resnet") / "resnet.onnx", dynamo=False, opset=13)


def test_a_wrong_weight_at_a_deep_layer_still_fails(resnet_path):
    """A 1 % change of the last convolution's weights (a conversion error) fails the calibrated
    check at the deepest feature map, naming the layer, the node and the criterion."""
    normalised = open_model(resnet_path)[1]
    deep = select_layers(list_layers(normalised), ["auto"])[-1]
    conversion = convert(normalised, [deep])
    convs = [m for m in conversion.module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        convs[-1].weight.mul_(1.01)
    x = np.random.default_rng(0).random(normalised.input_shape, dtype=np.float32)
    with torch.no_grad():
        features = conversion.module(torch.from_numpy(x))
    result = cross_check(conversion.truncated, normalised.input_name, features, x)
    (layer,) = result.layers
    assert not layer.passed and layer.criterion == "relative_l2"
    assert layer.rel_l2_error > layer.tolerance >= DEFAULT_RTOL
    with pytest.raises(ConversionError, match=f"layer '{deep.name}' \\(node '{deep.node_name}'\\).*relative L2"):
        result.raise_on_failure()


def test_the_untouched_conversion_passes_with_its_tolerance_reported(resnet_path):
    prepared = prepare(resnet_path, ["auto"])
    report = prepared.crosscheck.to_json()
    assert report["passed"] and report["calibrated"] and len(report["layers"]) == len(prepared.layers) >= 3
    for layer in report["layers"]:
        assert {"node_name", "tolerance", "rel_l2", "max_abs", "criterion", "passed"} <= set(layer)
        assert layer["criterion"] == "relative_l2" and layer["rel_l2"] <= layer["tolerance"]
        assert DEFAULT_RTOL <= layer["tolerance"] <= MAX_RTOL and layer["node_name"]


def test_absolute_criterion_only_for_a_near_zero_reference():
    """A Sigmoid map near zero everywhere: its relative error is rounding noise, the absolute
    criterion applies and says so. The same relative error on a map of ordinary scale fails."""
    rng = np.random.default_rng(0)
    tiny = rng.random((1, 4, 8, 8)) * 3e-7
    noisy = tiny + rng.standard_normal(tiny.shape) * 2e-8
    near_zero = judge("s", noisy.astype(np.float32), tiny, DEFAULT_RTOL, (0.0, 0.0))
    assert near_zero.passed and near_zero.criterion == "absolute" and near_zero.rel_l2_error > 1e-2
    assert near_zero.reference_scale < SCALE_FLOOR and "absolute" in near_zero.describe()
    ordinary = judge("s", (noisy * 1e6).astype(np.float32), tiny * 1e6, DEFAULT_RTOL, (0.0, 0.0))
    assert not ordinary.passed and ordinary.criterion == "relative_l2"


def test_shape_and_non_finite_fail_with_their_criterion():
    want = np.ones((1, 2, 3, 3))
    assert judge("a", np.ones((1, 2, 3, 4), np.float32), want, DEFAULT_RTOL, (0, 0)).criterion == "shape"
    bad = np.ones((1, 2, 3, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    verdict = judge("a", bad, want, DEFAULT_RTOL, (0, 0))
    assert not verdict.passed and verdict.criterion == "non_finite"


def test_calibration_never_exceeds_the_cap():
    verdict = judge("a", np.ones((1, 3), np.float32) * 1.02, np.ones((1, 3)), DEFAULT_RTOL, (0.5, 0.5))
    assert verdict.tolerance == MAX_RTOL and not verdict.passed
