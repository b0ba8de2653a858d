"""Quantised graphs analysed through their float equivalent (dequantised weights, no rounding).

The float graph is what the quantised one approximates: the analysis needs gradients, which
rounding to integers does not have. `NormalisedModel.dequantised` records that this ran, and
`NormalisedModel.source` keeps the quantised graph for a cross-check against it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConversionError
from .proto import (
    append_initializer,
    attribute,
    default_opset,
    drop_unused_initializers,
    is_default_domain,
    rename_tensors,
    replace_nodes,
    resolve_chains,
)
from .qoperator import (
    INDEX_OPS,
    MS_DOMAIN,
    PASSTHROUGH,
    activation_quantisation,
    float_passthrough,
    float_qlinear,
    qlinear_spec,
    refuse,
    saturation,
)

INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}


def dequantise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """DequantizeLinear of weights -> float weights; QuantizeLinear/DequantizeLinear pairs on
    activations -> Clip to the quantised range; DynamicQuantizeLinear + MatMulInteger/ConvInteger ->
    MatMul/Conv on the float input with the integer weights (their scale stays in the graph's Mul);
    QOperator graphs (QLinearConv, QLinearMatMul, com.microsoft QLinear*/QGemm) -> the float op on
    dequantised operands, saturated at the output's integer range (see `qoperator`)."""
    graph = model.graph
    opset = default_opset(model)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    params, _ = activation_quantisation(graph, constants)
    nodes, renames = [], {}
    counts = dict.fromkeys(("weights", "pairs", "dynamic", "integer ops", "activation DequantizeLinear"), 0)
    qlinear: dict[str, int] = {}
    for node in graph.node:
        kind, spec = node.op_type, qlinear_spec(node)
        integer_input = next((name for name in node.input if name in params), None)
        if kind == "DequantizeLinear" and node.input[0] in constants:
            value = _dequantised(node, constants)
            constants[node.output[0]] = value
            append_initializer(graph, node.output[0], value)
            counts["weights"] += 1
        elif kind == "DequantizeLinear" and _quantized_by(node, producers, constants):
            nodes.append(_saturation(graph, node, producers[node.input[0]].input[0], constants, opset))
            counts["pairs"] += 1
        elif kind == "DequantizeLinear" and node.input[0] in params:
            # a Clip to the range it already has, not an Identity: both names stay layers, as in the original
            nodes.append(saturation(graph, node.input[0], node.output[0], *params[node.input[0]], opset))
            counts["activation DequantizeLinear"] += 1
        elif kind == "DynamicQuantizeLinear":
            renames[node.output[0]] = node.input[0]
            append_initializer(graph, node.output[1], np.array(1.0, dtype=np.float32))
            append_initializer(graph, node.output[2], np.array(0.0, dtype=np.float32))
            counts["dynamic"] += 1
        elif kind in INTEGER_OPS:
            nodes.append(_float_op(graph, node, constants, producers))
            counts["integer ops"] += 1
        elif spec is not None:
            nodes.extend(float_qlinear(graph, node, spec, constants, params, opset))
            qlinear[kind] = qlinear.get(kind, 0) + 1
        elif kind == "QuantizeLinear" or integer_input is None or (is_default_domain(node) and kind in INDEX_OPS):
            nodes.append(node)
        elif is_default_domain(node) and kind in PASSTHROUGH:
            nodes.append(float_passthrough(graph, node, constants, params, opset))
        else:
            raise refuse(node, integer_input)
    if not any(counts.values()) and not qlinear:
        return model, None
    replace_nodes(graph, nodes)
    rename_tensors(graph, resolve_chains(renames))
    quantizers = _resolve_quantizers(graph, params, opset)
    _float_types(model, params)
    drop_unused_initializers(graph)
    return model, _detail(counts, qlinear, quantizers)


def _detail(counts: dict[str, int], qlinear: dict[str, int], quantizers: int) -> str:
    done = [f"{n} {what}" for what, n in counts.items() if n]
    if qlinear:
        ops = ", ".join(f"{k} ×{n}" for k, n in qlinear.items())
        done.append(f"QLinear ops -> float ops with saturation ({ops})")
    if quantizers:
        done.append(f"{quantizers} QuantizeLinear -> Clip")
    return "dequantised: " + ", ".join(done)


def _dequantised(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    """`(x - zero_point) * scale`, per tensor or along `axis` (blocked quantisation refused)."""
    x = constants[node.input[0]].astype(np.float32)
    scale = constants.get(node.input[1])
    zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    if scale is None or zero is None or attribute(node, "block_size"):
        raise ConversionError(
            f"dequantise: DequantizeLinear node '{node.name or node.output[0]}' has a non-constant or blocked scale; "
            "export the model with per-tensor or per-axis weight quantisation"
        )
    if scale.ndim == 1 and x.ndim > 1:
        axis = (attribute(node, "axis") if attribute(node, "axis") is not None else 1) % x.ndim
        view = [1] * x.ndim
        view[axis] = -1
        scale, zero = scale.reshape(view), zero.reshape(view)
    return ((x - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def _saturation(
    graph: onnx.GraphProto, node: onnx.NodeProto, source: str, constants: dict, opset: int
) -> onnx.NodeProto:
    """QuantizeLinear + DequantizeLinear -> Clip to the representable range: rounding dropped,
    saturation kept (quantisers fuse a Relu into it: zero point -128 of int8 clamps negatives)."""
    scale = constants[node.input[1]].astype(np.float32)
    zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), dtype=np.uint8)
    if scale.size != 1:
        raise ConversionError(
            f"dequantise: activation DequantizeLinear node '{node.name or node.output[0]}' is per-channel; "
            "quantise activations per tensor"
        )
    info = np.iinfo(zero.dtype)
    bounds = [float((limit - float(zero.ravel()[0])) * scale.ravel()[0]) for limit in (info.min, info.max)]
    base = node.name or node.output[0]
    if opset < 11:
        return helper.make_node("Clip", [source], [node.output[0]], name=base, min=bounds[0], max=bounds[1])
    low = append_initializer(graph, f"{base}__min", np.array(bounds[0], dtype=np.float32)).name
    high = append_initializer(graph, f"{base}__max", np.array(bounds[1], dtype=np.float32)).name
    return helper.make_node("Clip", [source, low, high], [node.output[0]], name=base)


def _quantized_by(node: onnx.NodeProto, producers: dict, constants: dict) -> bool:
    """Whether this DequantizeLinear undoes a QuantizeLinear with the same scale and zero point."""
    quantize = producers.get(node.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return False
    for i in (1, 2):
        ours = constants.get(node.input[i]) if len(node.input) > i else None
        theirs = constants.get(quantize.input[i]) if len(quantize.input) > i else None
        if ours is None or theirs is None or not np.array_equal(ours, theirs):
            raise ConversionError(
                f"dequantise: DequantizeLinear node '{node.name or node.output[0]}' does not undo its QuantizeLinear "
                f"'{quantize.name or quantize.output[0]}' (different or non-constant scale / zero point)"
            )
    return True


def _float_op(graph: onnx.GraphProto, node: onnx.NodeProto, constants: dict, producers: dict) -> onnx.NodeProto:
    """MatMulInteger/ConvInteger -> MatMul/Conv: constant integer operands become float
    `value - zero_point`; the others must come from a DynamicQuantizeLinear (then float already)."""
    base = node.name or node.output[0]
    operands = []
    for i in (0, 1):
        name = node.input[i]
        zero_name = node.input[i + 2] if len(node.input) > i + 2 else ""
        if name in constants:
            zero = constants.get(zero_name, np.zeros(())).astype(np.float32)
            if zero.ndim == 1 and i == 1:  # per output channel: along the weight's axis 0 (Conv) or 1 (MatMul)
                zero = zero.reshape(-1, *[1] * (constants[name].ndim - 1)) if node.op_type == "ConvInteger" else zero
            value = constants[name].astype(np.float32) - zero
            operands.append(append_initializer(graph, f"{base}__float{i}", value).name)
        elif producers.get(name) is not None and producers[name].op_type == "DynamicQuantizeLinear":
            operands.append(name)
        else:
            raise ConversionError(
                f"dequantise: {node.op_type} node '{base}' reads integer tensor '{name}' that is neither a weight nor "
                "a DynamicQuantizeLinear output; quantise the model with onnxruntime.quantization instead"
            )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return helper.make_node(INTEGER_OPS[node.op_type], operands, list(node.output), name=node.name, **attrs)


def _resolve_quantizers(graph: onnx.GraphProto, params: dict, opset: int) -> int:
    """QuantizeLinear of activations: dropped where nothing reads them any more (their DequantizeLinear
    became a Clip), else a Clip named as their output (QOperator: the float value of that integer
    tensor); DynamicQuantizeLinear nodes nothing reads are dropped. Returns how many became Clips."""
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    kept, clips = [], 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DynamicQuantizeLinear"):
            kept.append(node)
        elif node.output[0] in read and node.output[0] in params:
            scale, zero = params[node.output[0]]
            kept.append(saturation(graph, node.input[0], node.output[0], scale, zero, opset))
            clips += 1
        elif node.output[0] in read:
            kept.append(node)
    replace_nodes(graph, kept)
    return clips


def _float_types(model: onnx.ModelProto, params: dict) -> None:
    """Integer activations are float now: their recorded types go (outputs say float), and the
    contrib domain's import goes with its last node."""
    graph = model.graph
    kept = [value for value in graph.value_info if value.name not in params]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for value in graph.output:
        if value.name in params and value.type.HasField("tensor_type"):
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    if not any(node.domain == MS_DOMAIN for node in graph.node):
        imports = [op for op in model.opset_import if op.domain != MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)
