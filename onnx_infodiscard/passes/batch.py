"""A free batch dim: graphs exported at batch 1 run noise batches of any size."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .proto import BATCH, attribute, remove_attribute, replace_nodes, set_initializer, shape_table, use_counts
from .shapes import infer_shapes


def expand_batch_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """A batch-1 constant concatenated with input-dependent tensors (a ViT's class token, folded
    from `cls.expand(batch, ...)` by a batch-1 export) is expanded to their dim 0 at run time.

    Concat needs equal dims off its axis, so at the exported batch that dim 0 is 1 and the Expand
    changes nothing; at batch N it makes the class token N copies. Runs before shape inference:
    onnxruntime's symbolic inference would otherwise merge the batch dim with the constant's 1.
    """
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    reaches = {value.name for value in graph.input if value.name not in constants}
    nodes, expanded = [], 0
    for node in graph.node:
        varying = next((name for name in node.input if name in reaches), None)
        fixed = []
        if varying is not None:
            reaches.update(node.output)
            if node.op_type == "Concat":
                fixed = [i for i, name in enumerate(node.input) if _batch_one_constant(constants.get(name), node)]
        for i in fixed:
            prefix = f"{node.name or node.output[0]}__batch{i}"
            nodes.extend(_expand_to_batch(graph, constants[node.input[i]], varying, prefix))
            node.input[i] = nodes[-1].output[0]
            expanded += 1
        nodes.append(node)
    if not expanded:
        return model, None
    replace_nodes(graph, nodes)
    return model, f"{expanded} batch-1 constants in Concat expanded to the batch"


def free_batch_dim(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Reshape targets that hard-code batch 1 copy the batch instead (0), so noise batches run.

    Freeing one Reshape can reveal the batch to the next one downstream (ShuffleNet's channel
    shuffles), so shapes are inferred again until nothing changes.
    """
    freed = 0
    while True:
        changed = _free_batch_once(model)
        if not changed:
            break
        freed += changed
        model, _ = infer_shapes(model)
    return model, (f"{freed} Reshape nodes made batch-free" if freed else None)


def _batch_one_constant(init: onnx.TensorProto | None, concat: onnx.NodeProto) -> bool:
    """A constant of shape (1, ...) concatenated along an axis other than 0."""
    if init is None or len(init.dims) < 2 or init.dims[0] != 1:
        return False
    return (attribute(concat, "axis") or 0) % len(init.dims) != 0


def _expand_to_batch(
    graph: onnx.GraphProto, constant: onnx.TensorProto, like: str, prefix: str
) -> list[onnx.NodeProto]:
    """Nodes computing `Expand(constant, [dim 0 of like, *constant.shape[1:]])`."""
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}__first"))
    graph.initializer.append(numpy_helper.from_array(np.array(constant.dims[1:], dtype=np.int64), f"{prefix}__rest"))
    p = prefix
    return [
        helper.make_node("Shape", [like], [f"{p}__shape"], name=f"{p}__shape"),
        helper.make_node("Gather", [f"{p}__shape", f"{p}__first"], [f"{p}__n"], name=f"{p}__n", axis=0),
        helper.make_node("Concat", [f"{p}__n", f"{p}__rest"], [f"{p}__target"], name=f"{p}__target", axis=0),
        helper.make_node("Expand", [constant.name, f"{p}__target"], [f"{p}__expanded"], name=f"{p}__expand"),
    ]


def _free_batch_once(model: onnx.ModelProto) -> int:
    graph = model.graph
    shapes = shape_table(model)
    constants = {init.name: init for init in graph.initializer}
    uses = use_counts(graph)
    freed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in constants:
            continue
        data_shape = shapes.get(node.input[0])
        target = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
        if not data_shape or data_shape[0] != BATCH or target.size == 0 or target[0] != 1:
            continue
        if attribute(node, "allowzero") == 1:
            if 0 in target.tolist():
                continue
            remove_attribute(node, "allowzero")
        target = target.copy()
        target[0] = 0
        new_name = node.input[1] if uses[node.input[1]] == 1 else f"{node.input[1]}__batch_free"
        set_initializer(graph, numpy_helper.from_array(target, new_name))
        node.input[1] = new_name
        freed += 1
    return freed
