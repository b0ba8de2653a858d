"""Small helpers over onnx protos that every pass shares (read attributes, edit nodes and weights)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..load import default_opset, node_inputs  # noqa: F401  (re-exported: every pass needs them)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
#: The symbolic batch dim every normalised graph has.
BATCH = "N"


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def attribute(node: onnx.NodeProto, name: str):
    """The attribute's value (ints as a list), or None when the node does not set it."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def remove_attribute(node: onnx.NodeProto, name: str) -> None:
    kept = [attr for attr in node.attribute if attr.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    remove_attribute(node, name)
    node.attribute.append(helper.make_attribute(name, value))


def replace_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> None:
    """Make `nodes` the graph's node list (copies: protobuf lists own their elements)."""
    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def is_used(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in node.input for node in graph.node) or any(v.name == name for v in graph.output)


def resolve_chains(renames: dict[str, str]) -> dict[str, str]:
    """`a -> b, b -> c` becomes `a -> c, b -> c`."""
    resolved = {}
    for old in renames:
        new = renames[old]
        while new in renames and renames[new] != new:
            new = renames[new]
        resolved[old] = new
    return resolved


def rename_tensors(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for value in graph.output:
        value.name = renames.get(value.name, value.name)
    kept = [value for value in graph.value_info if value.name not in renames]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Delete in place: rebuilding the list would copy every (possibly huge) weight."""
    used = {name for node in graph.node for name in node_inputs(node)} | {value.name for value in graph.output}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def append_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> onnx.TensorProto:
    """Add `value` as an initializer with one copy of its bytes (from_array + append make three,
    which took seconds for the folded 400 MB weights of VGG)."""
    if value.dtype.kind not in "biuf":  # strings and exotic dtypes: the general path
        graph.initializer.append(numpy_helper.from_array(value, name))
        return graph.initializer[-1]
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
    tensor.dims.extend(value.shape)
    tensor.raw_data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    return tensor


def set_initializer(graph: onnx.GraphProto, tensor: onnx.TensorProto) -> None:
    """Replace the initializer of the same name, or add it."""
    for i, init in enumerate(graph.initializer):
        if init.name == tensor.name:
            graph.initializer[i].CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    """`base`, or `base__2`, ... so that no tensor of the graph has that name yet."""
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {init.name for init in graph.initializer} | {value.name for value in graph.input}
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}__{i}"
    return name


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A value's dims: ints where known, the symbolic name (or '?') where not."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def shape_table(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Every tensor whose shape the graph records, inputs and outputs included."""
    graph = model.graph
    return {
        value.name: dims(value)
        for value in list(graph.input) + list(graph.value_info) + list(graph.output)
        if value.type.tensor_type.HasField("shape")
    }


def clear_output_shapes(graph: onnx.GraphProto) -> None:
    """Output shapes are derived from the input's; inference writes them again."""
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
