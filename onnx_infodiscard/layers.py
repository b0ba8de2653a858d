"""Candidate layers (node outputs) of a normalised graph, and choosing among them."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from .errors import InputError, close_matches
from .normalise import NormalisedModel, _shape_table

ACTIVATIONS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Mish", "Clip", "ThresholdedRelu",
}
#: Ops whose outputs carry no gradient back to the named input slots (None: to none of them).
NON_DIFFERENTIABLE = {
    "ArgMax": None, "ArgMin": None, "Round": None, "Floor": None, "Ceil": None, "Sign": None, "Shape": None,
    "Size": None, "NonZero": None, "Equal": None, "Less": None, "LessOrEqual": None, "Greater": None,
    "GreaterOrEqual": None, "Not": None, "And": None, "Or": None, "Xor": None, "IsNaN": None, "IsInf": None,
    "ConstantOfShape": None, "Range": None, "EyeLike": None, "OneHot": None, "QuantizeLinear": None,
    "RandomNormalLike": None, "RandomUniformLike": None, "BitShift": None, "Mod": None,
}
#: Ops whose gradient flows only through some input slots (the rest are shapes or indices).
DIFFERENTIABLE_SLOTS = {
    "Reshape": {0}, "Expand": {0}, "Tile": {0}, "Slice": {0}, "Gather": {0}, "GatherElements": {0},
    "GatherND": {0}, "Resize": {0}, "Upsample": {0}, "Pad": {0, 2}, "Squeeze": {0}, "Unsqueeze": {0},
    "Where": {1, 2}, "TopK": {0}, "Split": {0}, "ReduceMean": {0}, "ReduceSum": {0}, "ReduceMax": {0},
    "ReduceMin": {0}, "ScatterND": {0, 2}, "ScatterElements": {0, 2}, "CumSum": {0}, "Trilu": {0},
}
INTEGER_CAST_TARGETS = {
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}
AUTO_COUNT = 6


@dataclass(frozen=True)
class Layer:
    """One candidate tensor: a node output, named as in the original graph."""

    index: int
    name: str
    op_type: str
    node_name: str
    shape: tuple[int | str, ...] | None
    depth: float  # relative: 0 at the input, 1 at the deepest graph output


def list_layers(model: NormalisedModel) -> list[Layer]:
    """Every node output that depends on the image input, in topological order."""
    graph = model.proto.graph
    shapes = _shape_table(model.proto)
    level = {model.input_name: 0}
    produced: list[tuple[onnx.NodeProto, str]] = []
    for node in graph.node:
        parents = [level[name] for name in node.input if name in level]
        if not parents:
            continue
        for name in node.output:
            if name:
                level[name] = max(parents) + 1
                produced.append((node, name))
    deepest = max([level.get(v.name, 0) for v in graph.output] + [1])
    return [
        Layer(
            index=i,
            name=name,
            op_type=node.op_type,
            node_name=node.name,
            shape=tuple(shapes[name]) if name in shapes else None,
            depth=min(level[name] / deepest, 1.0),
        )
        for i, (node, name) in enumerate(produced)
    ]


def select_layers(layers: Sequence[Layer], specs: Sequence[str]) -> list[Layer]:
    """Resolve names, indices, globs and `auto` to layers, in graph order, without duplicates."""
    if not layers:
        raise InputError("the graph has no layer that depends on its input")
    chosen: dict[int, Layer] = {}
    by_name = {layer.name: layer for layer in layers}
    for spec in specs or ["auto"]:
        spec = spec.strip()
        if spec == "auto":
            found = auto_layers(layers)
        elif spec in by_name:
            found = [by_name[spec]]
        elif _is_int(spec):
            index = int(spec)
            if not -len(layers) <= index < len(layers):
                raise InputError(f"layer index {index} is out of range; the graph has {len(layers)} layers (0..{len(layers) - 1})")
            found = [layers[index]]
        elif any(ch in spec for ch in "*?["):
            found = [layer for layer in layers if fnmatch.fnmatchcase(layer.name, spec)]
            if not found:
                raise InputError(f"layer pattern '{spec}' matches no layer; list them with `infodiscard layers MODEL`")
        else:
            raise InputError(f"unknown layer '{spec}'{close_matches(spec, by_name)}")
        for layer in found:
            chosen[layer.index] = layer
    return [chosen[i] for i in sorted(chosen)]


def auto_layers(layers: Sequence[Layer], count: int = AUTO_COUNT) -> list[Layer]:
    """About `count` evenly spaced activation outputs that still have spatial extent (before the head)."""
    spatial = [layer for layer in layers if _spatial_size(layer) > 1]
    pool = [layer for layer in spatial if layer.op_type in ACTIVATIONS] or spatial or list(layers)
    if len(pool) <= count:
        return list(pool)
    return [pool[round((i + 1) * len(pool) / count) - 1] for i in range(count)]


def _spatial_size(layer: Layer) -> int:
    if not layer.shape or len(layer.shape) < 3:
        return 1
    sizes = [d for d in layer.shape[1:] if isinstance(d, int)]
    if len(layer.shape) == 4:  # NCHW or NHWC: the two largest of the last three dims are spatial
        sizes = sorted(sizes)[-2:]
        return sizes[0] * sizes[1] if len(sizes) == 2 else 1
    return sizes[0] if sizes else 1  # (N, tokens, dim)


def check_differentiable(model: NormalisedModel, layers: Sequence[Layer]) -> None:
    """Refuse layers that do not depend on the input differentiably, naming the op that blocks them."""
    graph = model.proto.graph
    reaches = {model.input_name}  # tensors that depend on the input at all
    flows = {model.input_name}  # tensors a gradient can flow back from to the input
    blocker: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        touched = [name for name in node.input if name in reaches]
        if not touched:
            continue
        slots = _differentiable_slots(node)
        differentiable = any(name in flows for i, name in enumerate(node.input) if slots is None or i in slots)
        for out_index, name in enumerate(node.output):
            reaches.add(name)
            if differentiable and not (node.op_type == "TopK" and out_index == 1):
                flows.add(name)
            else:
                upstream = [blocker[n] for n in touched if n in blocker]
                blocker[name] = upstream[0] if upstream else node
    for layer in layers:
        if layer.name not in reaches:
            raise InputError(f"layer '{layer.name}' is constant with respect to the input; choose a layer the image reaches")
        if layer.name not in flows:
            node = blocker[layer.name]
            raise InputError(
                f"layer '{layer.name}' depends on the input only through non-differentiable op "
                f"{node.op_type} (node '{node.name}'); choose a layer before it"
            )


def _differentiable_slots(node: onnx.NodeProto) -> set[int] | None:
    """None: every slot is differentiable; an empty set: none is."""
    if node.op_type in NON_DIFFERENTIABLE:
        return set()
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i in INTEGER_CAST_TARGETS:
                return set()
    return DIFFERENTIABLE_SLOTS.get(node.op_type)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
