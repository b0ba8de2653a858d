"""Nodes and attributes that change nothing at inference but that onnx2torch handles badly."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from .proto import (
    attribute,
    is_default_domain,
    is_used,
    remove_attribute,
    rename_tensors,
    replace_nodes,
    resolve_chains,
)


def remove_inference_noops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`Dropout` and `Identity` do nothing at inference; onnx2torch wires Dropout's mask wrongly."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    graph_outputs = {value.name for value in graph.output}
    graph_inputs = {value.name for value in graph.input}
    kept, removed = [], 0
    renames: dict[str, str] = {}
    for node in graph.node:
        noop = node.op_type in ("Dropout", "Identity") and is_default_domain(node)
        source = node.input[0] if node.input else ""
        if not noop or source in constants or (len(node.output) > 1 and is_used(graph, node.output[1])):
            kept.append(node)
            continue
        removed += 1
        target = node.output[0]
        if target in graph_outputs and source not in graph_inputs:
            renames[source] = target  # keep the graph output's name; the producer takes it
        else:
            renames[target] = source
    if not removed:
        return model, None
    replace_nodes(graph, kept)
    rename_tensors(graph, resolve_chains(renames))
    return model, f"{removed} Dropout/Identity nodes removed"


def drop_unsupported_attributes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Attributes onnx2torch refuses although they change nothing here (`allowzero` with no 0)."""
    changed = 0
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and attribute(node, "allowzero") == 1 and node.input[1] in constants:
            if 0 not in numpy_helper.to_array(constants[node.input[1]]).tolist():
                remove_attribute(node, "allowzero")
                changed += 1
        if node.op_type.startswith("Reduce") and attribute(node, "noop_with_empty_axes") == 0:
            remove_attribute(node, "noop_with_empty_axes")
            changed += 1
    return model, (f"{changed} no-op attributes dropped" if changed else None)
