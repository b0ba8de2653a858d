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
        pad = helper.make_node("Pad", [node.input[0]], [f"{base}__in"], name=f"{node.name}__pad", mode="constant", pads=full_pads)
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(full_pads, dtype=np.int64), pad_name))
        pad = helper.make_node("Pad", [node.input[0], pad_name], [f"{base}__in"], name=f"{node.name}__pad", mode="constant")
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
