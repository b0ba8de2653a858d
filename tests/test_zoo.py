"""The 9 model-zoo graphs shipped inside the onnx package (`onnx/backend/test/data/light/`): old
Caffe2 exports with weights as inputs, Dropout, asymmetric pooling and hard-coded batch reshapes.
Each is listed by `layers` and passes `check --layer auto`; ResNet50 and VGG19 pass at every ReLU.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_graphs import ZOO_NAMES, zoo_path

from onnx_infodiscard.check import open_model, prepare
from onnx_infodiscard.crosscheck import ort_session
from onnx_infodiscard.layers import list_layers

CLI = [sys.executable, "-m", "onnx_infodiscard_cli.main"]


@pytest.fixture(scope="module")
def opened():
    """`opened(name) -> (loaded, normalised)`, each graph loaded and normalised once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = open_model(zoo_path(name))
        return cache[name]

    return get


def test_the_zoo_is_where_expected():
    assert all(zoo_path(name).is_file() for name in ZOO_NAMES)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_layers_lists_the_graph(name, opened):
    loaded, normalised = opened(name)
    layers = list_layers(normalised)
    assert len(layers) >= 20
    assert [layer.index for layer in layers] == list(range(len(layers)))
    assert layers[-1].name == loaded.proto.graph.output[0].name and layers[-1].depth == 1.0
    # Names are the original graph's: every ReLU output of the file is listed under its own name.
    relus = [node.output[0] for node in loaded.proto.graph.node if node.op_type == "Relu"]
    assert relus and set(relus) <= {layer.name for layer in layers}
    assert all(layer.shape is not None and layer.shape[0] == "N" for layer in layers)
    assert normalised.input_shape == (1, 3, 224, 224)
    assert len(loaded.sha256) == 64


def _run_ort(model: onnx.ModelProto, input_name: str, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on `model` with the tensors `names` exposed as outputs."""
    model = copy.deepcopy(model)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    session, _, _ = ort_session(model, prefer_cuda=False)
    return dict(zip(names, session.run(names, {input_name: x})))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_normalisation_keeps_what_the_graph_computes(name, opened):
    """Every float tensor that exists under the same name before and after normalisation has the
    same value in onnxruntime (the cross-check compares torch with the *normalised* graph only)."""
    loaded, normalised = opened(name)
    original_names = {out for node in loaded.proto.graph.node for out in node.output}
    names = [layer.name for layer in list_layers(normalised) if layer.name in original_names]
    assert len(names) >= 20
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    before = _run_ort(loaded.proto, normalised.input_name, names, x)
    after = _run_ort(normalised.proto, normalised.input_name, names, x)
    for tensor in names:
        want, got = before[tensor].astype(np.float64), after[tensor].astype(np.float64)
        assert got.shape == want.shape, tensor
        norm = np.linalg.norm(want)
        assert np.linalg.norm(got - want) <= 1e-5 * norm + 1e-6, tensor


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_check_auto_passes(name, record_property):
    prepared = prepare(zoo_path(name), ["auto"])
    record_property("seconds", round(prepared.seconds, 2))
    record_property("passes", [p.name for p in prepared.normalised.passes])
    assert prepared.crosscheck.passed
    assert prepared.crosscheck.provider == "CPUExecutionProvider"
    assert 5 <= len(prepared.layers) <= 6  # AlexNet and ZFNet have only five ReLU feature maps
    assert all(layer.activation for layer in prepared.layers)
    for agreement in prepared.crosscheck.layers:
        assert agreement.rel_l2_error <= 1e-4, agreement
    assert prepared.conversion.batch_safe
    applied = {p.name for p in prepared.normalised.passes}
    assert {"drop_initializer_inputs", "fold_constants"} <= applied  # weights as inputs, ConstantOfShape


@pytest.mark.parametrize("name,count", [("resnet50", 49), ("vgg19", 18)])
def test_check_every_relu(name, count, opened):
    _, normalised = opened(name)
    relus = [layer.name for layer in list_layers(normalised) if layer.op_type == "Relu"]
    assert len(relus) == count
    prepared = prepare(zoo_path(name), relus)
    assert [layer.name for layer in prepared.layers] == relus
    assert prepared.crosscheck.passed
    assert max(agreement.rel_l2_error for agreement in prepared.crosscheck.layers) <= 1e-4


def test_cli_check_auto_json():
    """Inception v1 needs the most passes (asymmetric AveragePool padding among them)."""
    path = zoo_path("inception_v1")
    result = subprocess.run(
        [*CLI, "check", str(path), "--layer", "auto", "--json"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] is True and summary["batch_safe"] is True
    assert len(summary["layers"]) == 6 and all(layer["passed"] for layer in summary["layers"])
    assert "rewrite_asymmetric_average_pool" in [p["name"] for p in summary["passes"]]
    assert summary["input"] == {"name": "data_0", "shape": [1, 3, 224, 224]}
    assert len(summary["sha256"]) == 64


def test_cli_layers_json():
    path = zoo_path("squeezenet")
    result = subprocess.run(
        [*CLI, "layers", str(path), "--ops", "Relu", "--json"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout)
    assert len(layers) == 26 and {layer["op_type"] for layer in layers} == {"Relu"}
    depths = [layer["depth"] for layer in layers]
    assert depths == sorted(depths) and 0 < depths[0] and depths[-1] < 1
