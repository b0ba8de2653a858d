"""Each coverage pass alone, on tiny graphs built with onnx.helper: the rewritten graph runs in
onnxruntime and gives the input graph's outputs; a pass that cannot do its job says so by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_infodiscard.errors import ConversionError
from onnx_infodiscard.passes import normalise, unconvertible_nodes
from onnx_infodiscard.passes.inputs import drop_unread_inputs, fix_input_shape
from onnx_infodiscard.passes.lowering import explicit_split, lower_gelu
from onnx_infodiscard.passes.opset import convert_opset
from onnx_infodiscard.passes.padding import explicit_auto_pad
from onnx_infodiscard.passes.shapes import infer_shapes

RNG = np.random.default_rng(0)


def _model(nodes, shape, outputs, opset=13, initializers=(), extra_inputs=()):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape), *extra_inputs]
    outs = [helper.make_empty_tensor_value_info(name) for name in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _same_outputs(before, after, shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    for want, got in zip(_run(before, x), _run(after, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool", "ConvTranspose"])
def test_auto_pad_becomes_explicit_pads_with_the_same_outputs(op, mode):
    shape = [1, 2, 7, 8]
    weight = numpy_helper.from_array(RNG.standard_normal((2, 2, 3, 3)).astype(np.float32), "w")
    conv = op.startswith("Conv")
    strides = [1, 1] if op == "ConvTranspose" else [2, 2]
    attrs = {"kernel_shape": [3, 3], "strides": strides, "auto_pad": mode}
    node = helper.make_node(op, ["x", "w"] if conv else ["x"], ["y"], **attrs)
    model = _model([node], shape, ["y"], initializers=[weight] if conv else [])
    rewritten, detail = explicit_auto_pad(infer_shapes(_copy(model))[0])
    assert detail == "1 auto_pad attributes -> explicit pads"
    assert all(attr.name != "auto_pad" for attr in rewritten.graph.node[0].attribute)
    _same_outputs(model, rewritten, shape)


def test_auto_pad_without_a_known_input_size_names_the_pass_and_node():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool1", kernel_shape=[2, 2], auto_pad="SAME_UPPER")
    model = _model([node], ["N", 2, "H", "W"], ["y"])
    with pytest.raises(ConversionError, match=r"explicit_auto_pad: MaxPool node 'pool1'.*input_shape"):
        explicit_auto_pad(infer_shapes(model)[0])


def test_same_upper_conv_graph_converts_end_to_end(tmp_path):
    from onnx_infodiscard.check import prepare

    weight = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    path = tmp_path / "same.onnx"
    model = _model(nodes, [1, 3, 9, 9], ["y"], initializers=[weight])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5]))
    onnx.save(model, path)
    prepared = prepare(path, layers=["y"])
    assert "explicit_auto_pad" in [p.name for p in prepared.normalised.passes]
    assert prepared.crosscheck.passed


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20_lowered_exactly(approximate):
    model = _model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], [1, 3, 4, 4], ["y"], opset=20)
    lowered, detail = lower_gelu(_copy(model))
    assert detail == "1 Gelu nodes -> Erf/Tanh form"
    assert "Gelu" not in {node.op_type for node in lowered.graph.node}
    _same_outputs(model, lowered, [1, 3, 4, 4])
    assert not unconvertible_nodes(lowered)  # onnx2torch has every op of the lowered form


def test_opset_step_names_the_op_the_version_converter_cannot_lower():
    model = _model([helper.make_node("Gelu", ["x"], ["y"], name="g1")], [1, 3, 4, 4], ["y"], opset=20)
    _, detail = convert_opset(model)
    assert "Gelu-20 (node 'g1')" in detail and "No Previous Version of Gelu" in detail, detail


def test_split_num_outputs_becomes_slices_onnx2torch_converts():
    split = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
    model = _model([split], [1, 7, 2, 2], ["a", "b", "c"], opset=18)
    rewritten, detail = explicit_split(_copy(model))
    assert detail == "1 Split num_outputs -> Slice per output"
    _same_outputs(model, rewritten, [1, 7, 2, 2])  # sizes 3, 3, 1
    assert not unconvertible_nodes(rewritten)


def test_inputs_no_node_reads_are_dropped_not_refused():
    extra = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("unused_a", "unused_b")]
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [1, 3, 4, 4], ["y"], extra_inputs=extra)
    dropped, detail = drop_unread_inputs(_copy(model))
    assert detail == "inputs no node reads dropped: 'unused_a', 'unused_b'"
    fix_input_shape(dropped, None, None)  # one image input left: no multi-input refusal
    assert normalise(model).input_name == "x"


def _float_net(path):
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    m = numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32) * 0.3, "m")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["y"]),
    ]
    model = _model(nodes, [1, 3, 6, 6], ["y"], initializers=[w, m])
    onnx.save(model, path)
    return model


@pytest.mark.parametrize("kind", ["dynamic", "static_qdq"])
def test_quantised_graph_analysed_through_its_float_equivalent(tmp_path, kind):
    from onnxruntime import quantization as q

    source, target = tmp_path / "float.onnx", tmp_path / "quant.onnx"
    float_model = _float_net(source)
    x = RNG.random((1, 3, 6, 6)).astype(np.float32)
    if kind == "dynamic":
        q.quantize_dynamic(str(source), str(target), op_types_to_quantize=["Conv", "MatMul"])
    else:

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"x": x}])

            def get_next(self):
                return next(self.batches, None)

        q.quantize_static(str(source), str(target), Reader(), quant_format=q.QuantFormat.QDQ)
    quantised = onnx.load(target)
    ops = {node.op_type for node in quantised.graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DequantizeLinear"}, ops
    normalised = normalise(quantised)
    assert normalised.dequantised and normalised.source is quantised
    left = {node.op_type for node in normalised.proto.graph.node}
    assert not left & {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
    assert not unconvertible_nodes(normalised.proto)
    (want,) = _run(float_model, x)
    (got,) = _run(normalised.proto, x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # the float net, up to weight rounding


def test_dynamo_export_at_opset_20_with_gelu_and_chunk_converts(tmp_path):
    """PyTorch's default exporter writes Gelu-20 and Split-18 with num_outputs (ConvNeXt, MaxViT)."""
    import torch
    from torch import nn

    from onnx_infodiscard.check import prepare

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            a, b = torch.chunk(self.conv(x), 2, dim=1)
            return nn.functional.gelu(a) + torch.tanh(b)

    path = tmp_path / "dynamo.onnx"
    with torch.no_grad():
        torch.onnx.export(Net().eval(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=True, opset_version=20)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "Gelu" in ops, ops
    prepared = prepare(path)
    assert "lower_gelu" in [p.name for p in prepared.normalised.passes]
    assert prepared.crosscheck.passed


def test_symbolic_shape_inference_writes_nothing_in_the_working_folder(tmp_path, monkeypatch):
    """Its incomplete-inference debug copy (and external-data file) stays in a scratch folder."""
    from onnx_infodiscard.passes.shapes import symbolic_shape_inference

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Foo", ["a"], ["y"], domain="com.example")]
    model = _model(nodes, [1, 3, 4, 4], ["y"])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    monkeypatch.chdir(tmp_path)
    symbolic_shape_inference(model)  # incomplete: the unknown op has no shape
    assert list(tmp_path.iterdir()) == []
