"""Ops newer than onnx2torch's converters, rewritten exactly in older ops before the opset step
(onnx's version converter has no adapter down for them)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, shape_inference

from ..errors import ConversionError
from .proto import append_initializer, attribute, dims, is_default_domain, replace_nodes
from .shapes import skeleton


def lower_gelu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Gelu (opset 20) -> its definition: `x/2 (1 + erf(x/√2))`, or the tanh form for
    `approximate="tanh"` (the function body the ONNX spec gives)."""
    graph = model.graph
    nodes, lowered = [], 0
    for node in graph.node:
        if node.op_type != "Gelu" or not is_default_domain(node):
            nodes.append(node)
            continue
        approximate = attribute(node, "approximate")
        approximate = approximate.decode() if isinstance(approximate, bytes) else (approximate or "none")
        nodes.extend(_gelu_nodes(graph, node, approximate))
        lowered += 1
    if not lowered:
        return model, None
    replace_nodes(graph, nodes)
    return model, f"{lowered} Gelu nodes -> Erf/Tanh form"


def _gelu_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, approximate: str) -> list[onnx.NodeProto]:
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]

    def const(suffix: str, value: float) -> str:
        return append_initializer(graph, f"{base}__{suffix}", np.array(value, dtype=np.float32)).name

    def op(kind: str, inputs: list[str], suffix: str, output: str | None = None) -> onnx.NodeProto:
        return helper.make_node(kind, inputs, [output or f"{base}__{suffix}"], name=f"{base}__{suffix}")

    one, half = const("one", 1.0), const("half", 0.5)
    if approximate == "tanh":
        cube = [op("Mul", [x, x], "sq"), op("Mul", [f"{base}__sq", x], "cube")]
        inner = [
            op("Mul", [f"{base}__cube", const("c", 0.044715)], "cubic"),
            op("Add", [x, f"{base}__cubic"], "poly"),
            op("Mul", [f"{base}__poly", const("k", math.sqrt(2 / math.pi))], "arg"),
            op("Tanh", [f"{base}__arg"], "curve"),
        ]
        body = cube + inner
    elif approximate == "none":
        body = [op("Div", [x, const("sqrt2", math.sqrt(2.0))], "arg"), op("Erf", [f"{base}__arg"], "curve")]
    else:
        raise ConversionError(f"lower_gelu: Gelu node '{base}' has approximate='{approximate}' (not none or tanh)")
    return body + [
        op("Add", [f"{base}__curve", one], "plus"),
        op("Mul", [x, f"{base}__plus"], "scaled"),
        op("Mul", [f"{base}__scaled", half], "out", output=y),
    ]


def explicit_split(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Split with `num_outputs` (opset 18) -> one Slice per output, with explicit bounds.

    onnx's version converter has no adapter down from Split-18 and onnx2torch no converter for
    it; Slice-13 has both. The bounds need the split axis' length, from onnx's shape inference
    on the fixed input.
    """
    graph = model.graph
    if not any(n.op_type == "Split" and attribute(n, "num_outputs") is not None for n in graph.node):
        return model, None
    inferred = shape_inference.infer_shapes(skeleton(model), data_prop=True).graph
    shapes = {value.name: dims(value) for value in list(inferred.input) + list(inferred.value_info)}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "Split" or attribute(node, "num_outputs") is None:
            nodes.append(node)
            continue
        nodes.extend(_split_as_slices(graph, node, shapes.get(node.input[0])))
        rewritten += 1
    replace_nodes(graph, nodes)
    return model, f"{rewritten} Split num_outputs -> Slice per output"


def _split_as_slices(graph: onnx.GraphProto, node: onnx.NodeProto, shape) -> list[onnx.NodeProto]:
    base = node.name or node.output[0]
    axis = attribute(node, "axis") or 0
    size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if not isinstance(size, int):
        raise ConversionError(
            f"explicit_split: Split node '{base}' (num_outputs, opset 18) splits an axis of unknown length "
            f"({shape}); fix the input dims (input_shape) so its length is known"
        )
    count = attribute(node, "num_outputs")
    chunk = -(-size // count)  # the spec: equal chunks, the last one smaller
    axes = append_initializer(graph, f"{base}__axes", np.array([axis], dtype=np.int64)).name
    slices = []
    for i, output in enumerate(node.output):
        begin, end = min(i * chunk, size), min((i + 1) * chunk, size)
        starts = append_initializer(graph, f"{base}__start{i}", np.array([begin], dtype=np.int64)).name
        ends = append_initializer(graph, f"{base}__end{i}", np.array([end], dtype=np.int64)).name
        inputs = [node.input[0], starts, ends, axes]
        slices.append(helper.make_node("Slice", inputs, [output], name=f"{base}__slice{i}"))
    return slices
