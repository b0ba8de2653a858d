"""Padding in the forms onnx2torch converts: explicit `pads` instead of `auto_pad`, and asymmetric
AveragePool padding made exact."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConversionError
from .proto import attribute, default_opset, replace_nodes, shape_table


def rewrite_asymmetric_average_pool(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Asymmetric AveragePool padding (Caffe2 Inception) -> exact Pad + AveragePool (+ count fix)."""
    graph = model.graph
    shapes = shape_table(model)
    nodes, rewritten = [], 0
    for node in graph.node:
        pads = attribute(node, "pads")
        if node.op_type != "AveragePool" or not pads or _symmetric(pads):
            nodes.append(node)
            continue
        nodes.extend(_pad_then_pool(graph, node, pads, shapes.get(node.input[0]), default_opset(model)))
        rewritten += 1
    if not rewritten:
        return model, None
    replace_nodes(graph, nodes)
    return model, f"{rewritten} asymmetric AveragePool -> Pad + AveragePool"


def _symmetric(pads: Sequence[int]) -> bool:
    half = len(pads) // 2
    return list(pads[:half]) == list(pads[half:])


def _pad_then_pool(
    graph: onnx.GraphProto, node: onnx.NodeProto, pads: Sequence[int], in_shape, opset: int
) -> list[onnx.NodeProto]:
    """Zero-pad explicitly, pool without padding, then rescale edge windows to the valid count.

    Before opset 11, Pad takes its pads as an attribute (Caffe2 graphs are opset 8 or 9).
    """
    half = len(pads) // 2
    kernel = list(attribute(node, "kernel_shape"))
    strides = list(attribute(node, "strides") or [1] * half)
    count_pad = bool(attribute(node, "count_include_pad") or 0)
    if attribute(node, "ceil_mode"):
        raise ConversionError(
            f"rewrite_asymmetric_average_pool: AveragePool '{node.name}' combines asymmetric pads with ceil_mode; "
            "re-export without it"
        )
    base = node.output[0]
    pad_name, pooled = f"{base}__pads", f"{base}__padded"
    full_pads = [0, 0, *pads[:half], 0, 0, *pads[half:]]
    if opset < 11:
        pad = helper.make_node(
            "Pad", [node.input[0]], [f"{base}__in"], name=f"{node.name}__pad", mode="constant", pads=full_pads
        )
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(full_pads, dtype=np.int64), pad_name))
        inputs = [node.input[0], pad_name]
        pad = helper.make_node("Pad", inputs, [f"{base}__in"], name=f"{node.name}__pad", mode="constant")
    pool_out = base if count_pad else pooled
    pool = helper.make_node(
        "AveragePool", [f"{base}__in"], [pool_out], name=node.name, kernel_shape=kernel, strides=strides
    )
    if count_pad:
        return [pad, pool]
    if in_shape is None or any(not isinstance(d, int) for d in in_shape[2:]):
        raise ConversionError(
            f"rewrite_asymmetric_average_pool: AveragePool '{node.name}' has asymmetric pads and an unknown input "
            "shape; give the input's dims"
        )
    scale = valid_count_scale(in_shape[2:], kernel, strides, pads)
    scale_name = f"{base}__count_scale"
    graph.initializer.append(numpy_helper.from_array(scale, scale_name))
    return [pad, pool, helper.make_node("Mul", [pooled, scale_name], [base], name=f"{node.name}__count")]


def valid_count_scale(spatial, kernel, strides, pads) -> np.ndarray:
    """kernel size / number of real (unpadded) inputs under each output window, (1, 1, *out).

    The count is separable (a product of one count per axis), so it costs one pass per axis
    instead of one per output pixel (seconds at 1024 x 1024).
    """
    half = len(pads) // 2
    counts = np.ones((), dtype=np.float64)
    for i in range(half):
        valid = np.pad(np.ones(spatial[i]), (pads[i], pads[i + half]))
        out = (valid.size - kernel[i]) // strides[i] + 1
        starts = np.arange(out) * strides[i]
        cumulative = np.concatenate([[0.0], np.cumsum(valid)])
        axis = cumulative[starts + kernel[i]] - cumulative[starts]
        counts = np.multiply.outer(counts, axis)
    return (math.prod(kernel) / counts).astype(np.float32)[None, None]


#: Ops whose `auto_pad` onnx2torch refuses (SAME_*) and that take explicit `pads` instead.
AUTO_PAD_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def explicit_auto_pad(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`auto_pad` SAME_UPPER / SAME_LOWER / VALID -> the explicit `pads` they mean at the graph's
    fixed input size (keras2onnx and tflite2onnx write SAME_UPPER; onnx2torch refuses it)."""
    shapes = shape_table(model)
    constants = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    for node in model.graph.node:
        mode = attribute(node, "auto_pad")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if node.op_type not in AUTO_PAD_OPS or mode in (None, "NOTSET"):
            continue
        spatial = _spatial_size(node, shapes.get(node.input[0]))
        kernel = attribute(node, "kernel_shape") or list(constants[node.input[1]].dims[2:])
        pads = _auto_pads(node, mode, spatial, list(kernel))
        _set_pads(node, pads)
        rewritten += 1
    return model, (f"{rewritten} auto_pad attributes -> explicit pads" if rewritten else None)


def _spatial_size(node: onnx.NodeProto, shape) -> list[int]:
    if shape is None or len(shape) < 3 or any(not isinstance(d, int) for d in shape[2:]):
        raise ConversionError(
            f"explicit_auto_pad: {node.op_type} node '{node.name or node.output[0]}' has auto_pad and an input of "
            f"unknown spatial size ({shape}); fix the model's input dims (input_shape) so shapes can be inferred"
        )
    return [int(d) for d in shape[2:]]


def _auto_pads(node: onnx.NodeProto, mode: str, spatial: list[int], kernel: list[int]) -> list[int]:
    """The ONNX spec's padding for `mode`: begins then ends."""
    rank = len(spatial)
    if mode == "VALID":
        return [0] * 2 * rank
    strides = list(attribute(node, "strides") or [1] * rank)
    dilations = list(attribute(node, "dilations") or [1] * rank)
    begins, ends = [], []
    for i in range(rank):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if node.op_type == "ConvTranspose":
            output_padding = (attribute(node, "output_padding") or [0] * rank)[i]
            total = strides[i] * (spatial[i] - 1) + output_padding + extent - spatial[i] * strides[i]
        else:
            total = (-(-spatial[i] // strides[i]) - 1) * strides[i] + extent - spatial[i]
        total = max(total, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    if node.op_type == "ConvTranspose" and begins != ends:
        raise ConversionError(
            f"explicit_auto_pad: ConvTranspose node '{node.name or node.output[0]}' (auto_pad {mode}) needs asymmetric "
            f"pads {begins + ends}, which onnx2torch cannot convert; re-export with explicit symmetric padding"
        )
    return begins + ends


def _set_pads(node: onnx.NodeProto, pads: list[int]) -> None:
    kept = [attr for attr in node.attribute if attr.name not in ("auto_pad", "pads")]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute("pads", pads))
