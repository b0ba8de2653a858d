"""Statically quantised graphs in the QOperator format (QLinearConv, QLinearMatMul, the com.microsoft
QLinear* ops and QGemm) are analysed through their float equivalent: weights and biases dequantised,
integer activations float under their own names, saturation kept. The float graph matches
onnxruntime on the quantised graph within what rounding costs, and an op the pass cannot
dequantise is refused by name."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_infodiscard.check import prepare
from onnx_infodiscard.crosscheck import QUANT_SAFETY
from onnx_infodiscard.errors import ConversionError
from onnx_infodiscard.layers import list_layers
from onnx_infodiscard.passes import normalise, unconvertible_nodes

RNG = np.random.default_rng(0)
DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits_cnn"
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _run(model, x, outputs=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"x": x})


def _quantised_graph(body, x_shape, y_shape, initializers, opset=13):
    """x → QuantizeLinear (scale 1/64, uint8 zero point 128) → `body` → DequantizeLinear → y."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"], name="quantise"),
        *body,
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_zp"], ["y"], name="dequantise"),
    ]
    inits = [_const("x_s", np.float32(1 / 64)), _const("x_zp", np.uint8(128)), *initializers]
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def qlinear_conv(per_channel: bool) -> tuple[onnx.ModelProto, float]:
    """A 3→4 channel QLinearConv with an int32 bias; returns the graph and its error bound: input
    rounding (x_s/2 through the largest Σ|w| of an output channel) plus one output step."""
    # 7-bit weights, as reduce_range writes them: x86 u8×s8 kernels saturate pair sums of full-range int8
    w_q = RNG.integers(-60, 60, (4, 3, 3, 3)).astype(np.int8)
    w_s = (np.array([0.002, 0.004, 0.001, 0.003]) if per_channel else np.array(0.002)).astype(np.float32)
    w_zp = np.zeros(4 if per_channel else (), np.int8)
    bias = RNG.integers(-2000, 2000, 4).astype(np.int32)
    y_s, y_zp = np.float32(0.02), np.uint8(100)
    conv = helper.make_node(
        "QLinearConv",
        ["x_q", "x_s", "x_zp", "w_q", "w_s", "w_zp", "y_s", "y_zp", "b_q"],
        ["y_q"],
        name="qconv",
        pads=[1, 1, 1, 1],
    )
    inits = [_const(n, v) for n, v in [("w_q", w_q), ("w_s", w_s), ("w_zp", w_zp), ("b_q", bias)]]
    inits += [_const("y_s", y_s), _const("y_zp", y_zp)]
    w = w_q.astype(np.float64) * (w_s.reshape(-1, 1, 1, 1) if per_channel else w_s)
    bound = 0.5 / 64 * np.abs(w).reshape(4, -1).sum(1).max() + float(y_s)
    return _quantised_graph([conv], [1, 3, 6, 6], [1, 4, 6, 6], inits), bound


def qlinear_matmul() -> tuple[onnx.ModelProto, float]:
    b_q = RNG.integers(0, 255, (6, 5)).astype(np.uint8)
    b_s, b_zp, y_s, y_zp = np.float32(0.003), np.uint8(120), np.float32(0.01), np.uint8(128)
    matmul = helper.make_node(
        "QLinearMatMul", ["x_q", "x_s", "x_zp", "b_q", "b_s", "b_zp", "y_s", "y_zp"], ["y_q"], name="qmatmul"
    )
    inits = [_const(n, v) for n, v in [("b_q", b_q), ("b_s", b_s), ("b_zp", b_zp), ("y_s", y_s), ("y_zp", y_zp)]]
    b = (b_q.astype(np.float64) - 120) * float(b_s)
    bound = 0.5 / 64 * np.abs(b).sum(0).max() + float(y_s)
    return _quantised_graph([matmul], [1, 1, 2, 6], [1, 1, 2, 5], inits), bound


@pytest.mark.parametrize(
    "build",
    [lambda: qlinear_conv(False), lambda: qlinear_conv(True), qlinear_matmul],
    ids=["conv", "conv_per_channel", "matmul"],
)
def test_qlinear_ops_become_their_float_op_within_rounding(build):
    model, bound = build()
    x = RNG.uniform(-1.5, 1.5, [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    x = x.astype(np.float32)
    normalised = normalise(model)
    assert normalised.dequantised and normalised.source is model
    detail = next(p.detail for p in normalised.passes if p.name == "dequantise")
    assert "QLinear" in detail and "1 QuantizeLinear -> Clip" in detail, detail
    left = {node.op_type for node in normalised.proto.graph.node}
    assert not left & QUANTISED_OPS and not unconvertible_nodes(normalised.proto), left
    (want,) = _run(model, x)
    (got,) = _run(normalised.proto, x)
    assert got.dtype == np.float32 and got.shape == want.shape
    error = np.abs(got - want).max()
    assert error <= bound, (error, bound)
    assert error > 0  # the quantised graph really rounds: the float one is not it


def test_a_wrong_per_channel_scale_would_exceed_the_bound():
    """The bound above can fail: per-tensor dequantisation of per-channel weights breaks it."""
    model, bound = qlinear_conv(True)
    x = RNG.uniform(-1.5, 1.5, (1, 3, 6, 6)).astype(np.float32)
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    for init in wrong.graph.initializer:
        if init.name == "w_s":
            init.CopyFrom(_const("w_s", np.full(4, 0.002, np.float32)))
    (want,) = _run(model, x)
    (got,) = _run(normalise(wrong).proto, x)
    assert np.abs(got - want).max() > bound


def test_the_cross_check_compares_dequantised_originals_at_a_rounding_tolerance(tmp_path):
    """Every layer is also compared with onnxruntime on the quantised graph: integer tensors through
    scale·(q − zero point), at QUANT_SAFETY × what simulated rounding changes there."""
    model, _ = qlinear_conv(True)
    onnx.save(model, tmp_path / "model.onnx")
    prepared = prepare(
        tmp_path / "model.onnx", ["x_q", "y_q", "y"], probe=RNG.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)
    )
    check = prepared.crosscheck
    assert check.passed and [a.layer for a in check.quantised] == ["x_q", "y_q", "y"]
    for agreement in check.quantised:
        assert agreement.criterion == "relative_l2" and 0 < agreement.rel_l2_error <= agreement.tolerance
        assert agreement.tolerance == pytest.approx(max(QUANT_SAFETY * agreement.sensitivity, 1e-4))
    assert "original quantised graph" in check.quantised_note
    assert check.to_json()["quantised"]["layers"][1]["layer"] == "y_q"


def test_an_op_the_pass_cannot_dequantise_is_named():
    body = [
        helper.make_node(
            "QLinearReduceMean", ["x_q", "x_s", "x_zp", "x_s", "x_zp"], ["m_q"], name="qmean", domain="com.microsoft"
        ),
        helper.make_node("Cos", ["m_q"], ["y_q"], name="cos"),
    ]
    model = _quantised_graph(
        body, [1, 3, 4, 4], [1, 3, 1, 1], [_const("y_s", np.float32(0.1)), _const("y_zp", np.uint8(0))]
    )
    with pytest.raises(ConversionError) as caught:
        normalise(model)
    message = str(caught.value)
    assert "\n" not in message
    assert "QLinearReduceMean node 'qmean' (domain 'com.microsoft')" in message and "'x_q'" in message


def test_a_runtime_scale_is_refused_by_name():
    model, _ = qlinear_matmul()
    scale = helper.make_node("Identity", ["y_s"], ["y_s_runtime"], name="runtime_scale")
    model.graph.node.insert(0, scale)
    model.graph.node[2].input[6] = "y_s_runtime"
    with pytest.raises(ConversionError, match="QLinearMatMul node 'qmatmul' has a output scale 'y_s_runtime'"):
        normalise(model)


def _digit(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    return ((image - 0.1307) / 0.3081)[None, None]


@pytest.fixture(scope="module")
def quantised_digits(tmp_path_factory) -> Path:
    """The shipped digits CNN through onnxruntime's own writer, QOperator format, calibrated on 4 digits."""
    from onnxruntime import quantization as q

    folder = tmp_path_factory.mktemp("qdigits")
    images = sorted((DIGITS / "images").glob("*.png"))[:4]

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": _digit(path)} for path in images])

        def get_next(self):
            return next(self.batches, None)

    target = folder / "digits_qop.onnx"
    q.quantize_static(str(DIGITS / "digits_cnn.onnx"), str(target), Reader(), quant_format=q.QuantFormat.QOperator)
    card = json.loads((DIGITS / "digits_cnn.onnx.json").read_text())
    for key in ("suggested_layers", "images", "foreground_boxes", "train_images"):
        card.pop(key, None)
    (folder / "digits_qop.onnx.json").write_text(json.dumps(card))
    for path in images[:1]:
        shutil.copy(path, folder / path.name)
    return target


def test_the_writers_qoperator_digits_cnn_is_analysed_as_float(quantised_digits):
    ops = {node.op_type for node in onnx.load(quantised_digits).graph.node}
    assert {"QLinearConv", "QGemm", "QLinearGlobalAveragePool"} <= ops, ops
    x = _digit(sorted((DIGITS / "images").glob("*.png"))[5])
    prepared = prepare(quantised_digits, ["auto"], probe=x)
    assert prepared.normalised.dequantised
    check = prepared.crosscheck
    assert check.passed and len(check.quantised) == len(prepared.layers) >= 3
    assert prepared.layers[0].name != "image_quantized"  # the input's saturation is not a feature map
    assert all(0 < a.rel_l2_error <= a.tolerance <= 0.3 for a in check.quantised)
    logits = normalise(onnx.load(quantised_digits))
    session = ort.InferenceSession(str(quantised_digits), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"image": x})
    (got,) = ort.InferenceSession(logits.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    assert got.argmax() == want.argmax()  # the same class as the quantised model
    assert [layer.name for layer in list_layers(logits)]  # layers are listed under the writer's names


def _cli(*args: str) -> tuple[int, str, str]:
    from onnx_infodiscard_cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main.run(list(args))
    return code, out.getvalue(), err.getvalue()


def test_check_and_a_one_step_analyze_say_dequantised(quantised_digits, tmp_path):
    code, out, err = _cli("check", str(quantised_digits), "--layer", "/conv2/Conv_output_0_quantized", "--json")
    assert code == 0, err
    checked = json.loads(out)
    assert any(p["name"] == "dequantise" for p in checked["passes"]), checked["passes"]
    (compared,) = checked["quantised"]["layers"]
    assert compared["layer"] == "/conv2/Conv_output_0_quantized" and compared["passed"]
    image = next(quantised_digits.parent.glob("*.png"))
    layer = "/conv3/Conv_output_0_quantized"
    args = ["analyze", str(quantised_digits), str(image), "-l", layer, "--steps", "1", "--samples", "2"]
    code, out, err = _cli(*args, "--out", str(tmp_path / "r"), "--json")
    assert code in (0, 4), err  # one step need not converge; it must run
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    (said,) = [line for line in report["normalisation"] if line.startswith("dequantise:")]
    assert "QLinearConv ×4" in said and "QGemm ×1" in said, said
    assert report["results"][0]["layer"] == layer
    assert [a["layer"] for a in report["crosscheck"]["quantised"]["layers"]] == [layer]


def _float_head(path: Path) -> list[np.ndarray]:
    """A float CNN with every op quantize_static writes a com.microsoft QLinear op for (Add, Mul,
    Sigmoid, LeakyRelu, Concat, AveragePool, GlobalAveragePool, Gemm → QGemm, Softmax), MaxPool, Pad
    (its constant becomes the zero point) and Flatten on integers between; returns calibration inputs."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["g"]),
        helper.make_node("Mul", ["s", "g"], ["m"]),
        helper.make_node("LeakyRelu", ["m"], ["l"], alpha=0.1),
        helper.make_node("Concat", ["l", "a"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Pad", ["p", "pads", "pad_value"], ["pd"]),
        helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "B"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    shapes = {"w1": (4, 3, 3, 3), "b1": (4,), "w2": (4, 4, 3, 3), "W": (5, 8), "B": (5,)}
    scales = {"w1": 0.4, "b1": 0.1, "w2": 0.2, "W": 1.0, "B": 0.1}
    inits = [_const(n, (rng.standard_normal(s) * scales[n]).astype(np.float32)) for n, s in shapes.items()]
    inits += [_const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), _const("pad_value", np.float32(0))]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return [rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]


def test_the_writers_contrib_ops_and_gemm_head_are_dequantised(tmp_path):
    from onnxruntime import quantization as q

    batches = _float_head(tmp_path / "head.onnx")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x} for x in batches])

        def get_next(self):
            return next(self.batches, None)

    target = tmp_path / "head_q.onnx"
    q.quantize_static(str(tmp_path / "head.onnx"), str(target), Reader(), quant_format=q.QuantFormat.QOperator)
    written = {(node.domain, node.op_type) for node in onnx.load(target).graph.node}
    contrib = {"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat"}
    contrib |= {"QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm", "QLinearSoftmax"}
    assert {("com.microsoft", op) for op in contrib} <= written, written
    assert {("", "MaxPool"), ("", "Pad"), ("", "Flatten")} <= written
    normalised = normalise(onnx.load(target))
    detail = next(p.detail for p in normalised.passes if p.name == "dequantise")
    assert all(f"{op} ×1" in detail for op in contrib), detail
    assert not any(node.domain for node in normalised.proto.graph.node)
    assert all(op.domain in ("", "ai.onnx") for op in normalised.proto.opset_import)
    names = [layer.name for layer in list_layers(normalised) if not layer.name.endswith("__float")]
    assert {"s_quantized", "cat_quantized", "p_quantized", "pd_quantized", "logits_quantized", "prob"} <= set(names)
    prepared = prepare(target, names, probe=batches[0])
    assert prepared.crosscheck.passed and len(prepared.crosscheck.quantised) == len(names)
    assert all(a.criterion == "relative_l2" and a.rel_l2_error > 0 for a in prepared.crosscheck.quantised)


def test_a_float_graph_that_is_not_the_quantised_ones_equivalent_fails():
    """A dequantisation error (weights 25 % off, say a wrong scale) that torch and the float graph agree on is caught by
    the comparison with the quantised original, naming the layer."""
    from onnx_infodiscard.convert import convert
    from onnx_infodiscard.crosscheck import cross_check
    from onnx_infodiscard.layers import select_layers

    model, _ = qlinear_conv(False)
    normalised = normalise(model)
    for init in normalised.proto.graph.initializer:
        if init.name == "qconv__float1":  # the dequantised weight
            init.CopyFrom(_const(init.name, numpy_helper.to_array(init) * 1.25))
    layers = select_layers(list_layers(normalised), ["y_q"])
    conversion = convert(normalised, layers)
    x = RNG.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)
    import torch

    with torch.no_grad():
        features = conversion.module(torch.from_numpy(x))
    result = cross_check(conversion.truncated, normalised.input_name, features, x, source=model)
    assert all(a.passed for a in result.layers) and not result.passed, result.quantised
    with pytest.raises(ConversionError, match="quantised graph differs from it at layer 'y_q' beyond what rounding"):
        result.raise_on_failure()


@pytest.mark.parametrize("kind", ["qdq", "dynamic"])
def test_qdq_graphs_are_compared_with_their_original_and_dynamic_ones_say_why_not(kind, tmp_path):
    from onnxruntime import quantization as q

    images = sorted((DIGITS / "images").glob("*.png"))[:2]
    target = tmp_path / f"digits_{kind}.onnx"
    if kind == "dynamic":
        q.quantize_dynamic(str(DIGITS / "digits_cnn.onnx"), str(target), op_types_to_quantize=["Conv"])
    else:

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"image": _digit(path)} for path in images])

            def get_next(self):
                return next(self.batches, None)

        q.quantize_static(str(DIGITS / "digits_cnn.onnx"), str(target), Reader(), quant_format=q.QuantFormat.QDQ)
    prepared = prepare(target, ["auto"], probe=_digit(images[0]))
    check = prepared.crosscheck
    assert prepared.normalised.dequantised and check.passed
    if kind == "dynamic":
        assert check.quantised == () and check.quantised_note.startswith("dynamic quantisation")
    else:
        assert len(check.quantised) == len(prepared.layers)
        assert all(0 < a.rel_l2_error <= a.tolerance for a in check.quantised)


def test_qgemm_with_a_float_output_and_per_column_weights():
    """QGemm may end the quantised part: no output scale, a float output, transB weights (N, K)
    quantised per output column, an int32 bias at a_scale·b_scale."""
    b_q = RNG.integers(-60, 60, (5, 6)).astype(np.int8)
    b_s = np.linspace(0.002, 0.006, 5).astype(np.float32)
    bias = RNG.integers(-500, 500, 5).astype(np.int32)
    gemm = helper.make_node(
        "QGemm",
        ["x_q", "x_s", "x_zp", "b_q", "b_s", "b_zp", "bias"],
        ["y"],
        name="qgemm",
        domain="com.microsoft",
        transB=1,
    )
    inits = [_const(n, v) for n, v in [("b_q", b_q), ("b_s", b_s), ("b_zp", np.zeros(5, np.int8)), ("bias", bias)]]
    inits += [_const("x_s", np.float32(1 / 64)), _const("x_zp", np.uint8(128))]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("QuantizeLinear", ["flat", "x_s", "x_zp"], ["x_q"]),
        gemm,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    x = RNG.uniform(-1.5, 1.5, (1, 1, 2, 3)).astype(np.float32)
    normalised = normalise(model)
    assert {node.op_type for node in normalised.proto.graph.node} == {"Flatten", "Clip", "Gemm"}
    (want,) = _run(model, x)
    (got,) = _run(normalised.proto, x)
    b = b_q.astype(np.float64) * b_s[:, None]
    bound = 0.5 / 64 * np.abs(b).sum(1).max() + 1e-5  # input rounding only: the output is not rounded
    assert 0 < np.abs(got - want).max() <= bound


def test_relu_on_int8_clamps_at_the_zero_points_float_value():
    """Relu of int8 values clamps at q = 0, which is −scale·zero_point in float, not at 0."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("Relu", ["q"], ["r"], name="int_relu"),
        helper.make_node("DequantizeLinear", ["r", "s", "zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [_const("s", np.float32(0.05)), _const("zp", np.int8(10))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    (want,) = _run(model, x)
    (got,) = _run(normalise(model).proto, x)
    assert got.min() == pytest.approx(-0.5) and want.min() == pytest.approx(-0.5)
    assert np.abs(got - want).max() <= 0.05 / 2 + 1e-6  # one rounding
