"""QOperator-format quantised graphs (QLinearConv, QLinearMatMul, com.microsoft QLinear* / QGemm)
as their float equivalent: every integer activation tensor keeps its name and holds, in float, the
value it dequantises to, `scale·(q − zero_point)`, before rounding; saturation to the integer range
is kept (a Clip), as the quantiser fuses Relu into it. Weights and int32 biases are dequantised.

`activation_quantisation` is also what the cross-check reads: which tensors of the original graph
are integers (so onnxruntime's value is dequantised before comparing) and where rounding happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import ConversionError
from .proto import append_initializer, attribute

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class QOp:
    """Where a QLinear op keeps its operands: (value, scale, zero point) input positions, the
    input positions of an int32 bias and of the two scales it is quantised with, and of the output
    (scale, zero point) or None when the output is float."""

    float_op: str
    operands: tuple[tuple[int, int, int], ...]
    output: tuple[int, int] | None
    bias: tuple[int, int, int] | None = None  # (bias, scale a, scale b): float bias = bias·a·b
    dropped: tuple[str, ...] = ()  # attributes that mean nothing in float ("channels_last" must be 0)


UNARY = ((0, 1, 2),)
QLINEAR_OPS = {
    ("", "QLinearConv"): QOp("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7), bias=(8, 1, 4)),
    ("", "QLinearMatMul"): QOp("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    (MS_DOMAIN, "QGemm"): QOp("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8), bias=(6, 1, 4)),
    (MS_DOMAIN, "QLinearAdd"): QOp("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    (MS_DOMAIN, "QLinearMul"): QOp("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    (MS_DOMAIN, "QLinearAveragePool"): QOp("AveragePool", UNARY, (3, 4), dropped=("channels_last",)),
    (MS_DOMAIN, "QLinearGlobalAveragePool"): QOp("GlobalAveragePool", UNARY, (3, 4), dropped=("channels_last",)),
    (MS_DOMAIN, "QLinearSigmoid"): QOp("Sigmoid", UNARY, (3, 4)),
    (MS_DOMAIN, "QLinearLeakyRelu"): QOp("LeakyRelu", UNARY, (3, 4)),
    (MS_DOMAIN, "QLinearSoftmax"): QOp("Softmax", UNARY, (3, 4), dropped=("opset",)),
}
#: Ops that move or select integer values without arithmetic: the same op on the dequantised
#: values gives the dequantised result, so they run unchanged in float (their output keeps the scale).
PASSTHROUGH = {
    "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Gather",
    "Split", "Resize", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Pad", "Relu",
}  # fmt: skip
#: Ops whose output is not a quantised value (indices, shapes): they read integer tensors harmlessly.
INDEX_OPS = {"ArgMax", "ArgMin", "Shape", "Size"}


def _key(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def qlinear_spec(node: onnx.NodeProto) -> QOp | None:
    """Concat has a variadic layout: (Y scale, Y zero point, then a triple per input)."""
    if _key(node) == (MS_DOMAIN, "QLinearConcat"):
        triples = tuple((i, i + 1, i + 2) for i in range(2, len(node.input), 3))
        return QOp("Concat", triples, (0, 1))
    return QLINEAR_OPS.get(_key(node))


def _param(node: onnx.NodeProto, index: int, constants: dict, what: str) -> np.ndarray | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    if node.input[index] not in constants:
        raise ConversionError(
            f"dequantise: {node.op_type} node '{node.name or node.output[0]}' has a {what} '{node.input[index]}' "
            "computed at run time, not a constant; quantise statically (onnxruntime.quantization.quantize_static)"
        )
    return constants[node.input[index]]


def activation_quantisation(graph: onnx.GraphProto, constants: dict) -> tuple[dict, set[str]]:
    """`({integer activation: (scale, zero point)}, {tensors where rounding happens})`: outputs of
    QuantizeLinear and QLinear ops round; pass-through ops carry their input's quantisation on."""
    params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rounded: set[str] = set()
    for node in graph.node:
        spec = qlinear_spec(node)
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            scale = _param(node, 1, constants, "scale")
            zero = _param(node, 2, constants, "zero point")
            params[node.output[0]] = (scale, zero if zero is not None else np.zeros((), np.uint8))
            rounded.add(node.output[0])
        elif spec is not None and spec.output is not None:
            scale = _param(node, spec.output[0], constants, "output scale")
            zero = _param(node, spec.output[1], constants, "output zero point")
            params[node.output[0]] = (scale, zero if zero is not None else np.zeros((), np.uint8))
            rounded.add(node.output[0])
        elif node.op_type in PASSTHROUGH and node.input and node.input[0] in params:
            for out in node.output:
                params[out] = params[node.input[0]]
    return params, rounded


def dequantised_constant(value: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """`scale·(value − zero point)`, per tensor or per channel along `axis`."""
    zero = np.zeros(()) if zero is None else zero
    scale, zero = scale.astype(np.float32), zero.astype(np.float32)
    if scale.size > 1 and value.ndim > 1:
        view = [1] * value.ndim
        view[axis % value.ndim] = -1
        scale, zero = scale.reshape(view), zero.reshape(view)
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


def _weight_axis(node: onnx.NodeProto, operand: int) -> int:
    """The output-channel axis of a per-channel weight: Conv's 0, MatMul's last, Gemm's by transB."""
    if node.op_type == "QLinearConv" or (node.op_type == "QGemm" and operand == 1 and attribute(node, "transB")):
        return 0
    return -1


def saturation(graph: onnx.GraphProto, source: str, target: str, scale, zero, opset: int) -> onnx.NodeProto:
    """Clip `source` to the range the integer type represents at (scale, zero point), into `target`."""
    if np.asarray(scale).size != 1:
        raise ConversionError(
            f"dequantise: activation '{target}' is quantised per channel; quantise activations per tensor"
        )
    info = np.iinfo(np.asarray(zero).dtype)
    s, z = float(np.asarray(scale).ravel()[0]), float(np.asarray(zero).ravel()[0])
    low, high = (info.min - z) * s, (info.max - z) * s
    if opset < 11:
        return helper.make_node("Clip", [source], [target], name=f"{target}__saturate", min=low, max=high)
    bounds = [
        append_initializer(graph, f"{target}__{k}", np.array(v, np.float32)).name
        for k, v in (("min", low), ("max", high))
    ]
    return helper.make_node("Clip", [source, *bounds], [target], name=f"{target}__saturate")


def float_qlinear(
    graph: onnx.GraphProto, node: onnx.NodeProto, spec: QOp, constants: dict, params: dict, opset: int
) -> list[onnx.NodeProto]:
    """One QLinear op -> its float op on the dequantised operands, then saturation at its output."""
    base = node.name or node.output[0]
    inputs = []
    for k, (value, scale_at, zero_at) in enumerate(spec.operands):
        name = node.input[value]
        scale = _param(node, scale_at, constants, "scale")
        zero = _param(node, zero_at, constants, "zero point")
        if name in constants:
            weight = dequantised_constant(constants[name], scale, zero, _weight_axis(node, k))
            inputs.append(append_initializer(graph, f"{base}__float{k}", weight).name)
        elif name in params:
            inputs.append(name)  # an integer activation: already its dequantised float value
        else:
            raise ConversionError(
                f"dequantise: {node.op_type} node '{base}' reads '{name}', neither a constant nor a quantised "
                "activation of this graph; quantise the model with onnxruntime.quantization.quantize_static"
            )
    if spec.bias is not None and len(node.input) > spec.bias[0] and node.input[spec.bias[0]]:
        bias_at, a_at, b_at = spec.bias
        bias = _param(node, bias_at, constants, "bias").astype(np.float64)
        scales = constants[node.input[a_at]].astype(np.float64) * constants[node.input[b_at]].astype(np.float64)
        inputs.append(append_initializer(graph, f"{base}__bias", (bias * scales).astype(np.float32)).name)
    dropped = {"channels_last": 0}
    attrs = {}
    for attr in node.attribute:
        if attr.name in spec.dropped:
            if attr.name in dropped and helper.get_attribute_value(attr) != dropped[attr.name]:
                raise ConversionError(
                    f"dequantise: {node.op_type} node '{base}' (domain '{node.domain}') has {attr.name}="
                    f"{helper.get_attribute_value(attr)}; only channels-first graphs can be dequantised"
                )
            continue
        attrs[attr.name] = helper.get_attribute_value(attr)
    if spec.output is None or len(node.input) <= spec.output[0] or not node.input[spec.output[0]]:
        return [helper.make_node(spec.float_op, inputs, [node.output[0]], name=base, **attrs)]
    scale, zero = params[node.output[0]]
    raw = f"{node.output[0]}__float"
    return [
        helper.make_node(spec.float_op, inputs, [raw], name=base, **attrs),
        saturation(graph, raw, node.output[0], scale, zero, opset),
    ]


def float_passthrough(
    graph: onnx.GraphProto, node: onnx.NodeProto, constants: dict, params: dict, opset: int
) -> onnx.NodeProto:
    """Relu on integers clamps at q = 0, i.e. at −scale·zero_point in float; Pad's constant is an integer."""
    scale, zero = params[node.input[0]]
    if node.op_type == "Relu":
        floor = float(-np.asarray(scale, np.float64).ravel()[0] * float(np.asarray(zero).ravel()[0]))
        if opset < 11:
            return helper.make_node("Clip", [node.input[0]], list(node.output), name=node.name, min=floor)
        low = append_initializer(graph, f"{node.output[0]}__min", np.array(floor, np.float32)).name
        return helper.make_node("Clip", [node.input[0], low], list(node.output), name=node.name)
    if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
        value = dequantised_constant(constants[node.input[2]], scale, zero, -1)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[2] = append_initializer(graph, f"{node.output[0]}__value", value).name
        return copy
    if node.op_type == "Pad" and attribute(node, "value"):
        raise ConversionError(f"dequantise: Pad node '{node.name}' pads an integer tensor with an attribute value")
    return node


def refuse(node: onnx.NodeProto, integer_input: str) -> ConversionError:
    domain = node.domain or "ai.onnx"
    return ConversionError(
        f"dequantise: {node.op_type} node '{node.name or node.output[0]}' (domain '{domain}') reads quantised "
        f"tensor '{integer_input}' and has no float equivalent in this pass; quantise without it "
        "(onnxruntime.quantization: op_types_to_quantize / nodes_to_exclude)"
    )
