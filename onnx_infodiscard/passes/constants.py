"""Weights in the form onnx2torch reads: Constant nodes as initializers, constant subgraphs folded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import ConversionError
from .proto import append_initializer, default_opset, drop_unused_initializers, is_default_domain, replace_nodes

NONDETERMINISTIC_OPS = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
}  # fmt: skip


def constants_to_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`Constant` nodes become initializers: onnx2torch's converters read weights from initializers."""
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and is_default_domain(node):
            append_initializer(graph, node.output[0], _constant_value(node))
            moved += 1
        else:
            kept.append(node)
    if not moved:
        return model, None
    replace_nodes(graph, kept)
    return model, f"{moved} Constant nodes -> initializers"


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Evaluate nodes whose inputs are all constants (ConstantOfShape weights, Identity(weight), ...)."""
    graph = model.graph
    opset = default_opset(model)
    constants = {init.name: init for init in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        if not _foldable(node, constants):
            kept.append(node)
            continue
        feeds = {name: numpy_helper.to_array(constants[name]) for name in node.input if name}
        try:
            values = ReferenceEvaluator(_single_node_model(node, constants, opset)).run(None, feeds)
        except Exception:  # the reference runtime can't evaluate it: leave the node for onnx2torch
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                constants[name] = append_initializer(graph, name, np.asarray(value))
        folded += 1
    if not folded:
        return model, None
    replace_nodes(graph, kept)
    drop_unused_initializers(graph)
    return model, f"{folded} constant nodes folded into initializers"


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(attr.floats, dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(attr.ints, dtype=np.int64)
    raise ConversionError(
        f"constants_to_initializers: Constant node '{node.name}' holds a '{attr.name}', which cannot become a weight"
    )


def _foldable(node: onnx.NodeProto, constants: dict) -> bool:
    if not is_default_domain(node) or node.op_type in NONDETERMINISTIC_OPS:
        return False
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return False
    inputs = [name for name in node.input if name]
    return bool(inputs) and all(name in constants for name in inputs)


def _single_node_model(node: onnx.NodeProto, constants: dict, opset: int) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(name, constants[name].data_type, list(constants[name].dims))
        for name in dict.fromkeys(n for n in node.input if n)
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
