"""Candidate layers (node outputs) of a normalised graph, and choosing among them."""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import onnx

from .errors import InputError, close_matches
from .passes import NormalisedModel, shape_table as _shape_table

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
#: Activations that exporters also use as gates: `x * Sigmoid(x)` is SiLU, `x * HardSigmoid(x)` hard-swish.
GATES = {"Sigmoid", "HardSigmoid"}
#: Ops that can end a decomposed GELU, `x * 0.5 * (1 + erf(x / sqrt 2))` or its tanh form.
GELU_CORES = {"Erf", "Tanh"}


@dataclass(frozen=True)
class Layer:
    """One candidate tensor: a node output, named as in the original graph."""

    index: int
    name: str
    op_type: str
    node_name: str
    shape: tuple[int | str, ...] | None
    depth: float  # relative: 0 at the input, 1 at the deepest tensor (the graph output, normally)
    activation: bool = False  # an activation's output, composites (hard-swish, GELU) included


def list_layers(model: NormalisedModel) -> list[Layer]:
    """Every node output that depends on the image input, in topological order.

    Depth is the longest path from the input in nodes, over the longest in the graph: it grows
    strictly along every edge, so a layer is always deeper than the layers it reads.
    """
    graph = model.proto.graph
    shapes = _shape_table(model.proto)
    activations = activation_outputs(graph)
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
    deepest = max(level.values()) or 1
    return [
        Layer(
            index=i,
            name=name,
            op_type=node.op_type,
            node_name=node.name,
            shape=tuple(shapes[name]) if name in shapes else None,
            depth=level[name] / deepest,
            activation=name in activations,
        )
        for i, (node, name) in enumerate(produced)
    ]


def activation_outputs(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors that are activation outputs, as a reader of the model means them.

    Exporters decompose some activations: hard-swish and SiLU become `Mul(x, gate(x))` (the Mul is
    the activation, the gate is not), GELU becomes `Erf` or `Tanh` followed by `Add` and `Mul`s
    (the last Mul is the activation).
    """
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    found = set()
    for node in graph.node:
        if node.op_type in GELU_CORES and (end := _gelu_end(node, consumers)):
            found.add(end)
            continue
        if node.op_type not in ACTIVATIONS or not node.output:
            continue
        out = node.output[0]
        gated = [c for c in consumers[out] if c.op_type == "Mul" and node.input[0] in c.input]
        if node.op_type in GATES and gated:
            found.update(c.output[0] for c in gated)
        else:
            found.add(out)
    return found


def _gelu_end(core: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The last Mul of `core -> Add -> Mul -> Mul`, each the only consumer of the one before."""
    chain = []
    name = core.output[0]
    while len(chain) < 3 and len(consumers[name]) == 1 and consumers[name][0].op_type in ("Add", "Mul"):
        chain.append(consumers[name][0])
        name = chain[-1].output[0]
    ops = [node.op_type for node in chain]
    if len(ops) >= 2 and ops[0] == "Add" and ops[-1] == "Mul":
        return name
    return None


def constant_tensors(model: NormalisedModel) -> set[str]:
    """Weights and tensors computed from weights only: names a user may try as a layer by mistake."""
    graph = model.proto.graph
    reaches = {model.input_name}
    names = {init.name for init in graph.initializer}
    for node in graph.node:
        if any(name in reaches for name in node.input):
            reaches.update(node.output)
        else:
            names.update(name for name in node.output if name)
    return names


def select_layers(
    layers: Sequence[Layer], specs: Sequence[str], constants: Collection[str] = ()
) -> list[Layer]:
    """Resolve names, indices, globs and `auto` to layers, in graph order, without duplicates.

    `constants`: tensors of the graph that are not layers because the input does not reach them
    (`constant_tensors`); naming one gets that explanation instead of "unknown layer".
    """
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
        elif spec in constants:
            raise InputError(
                f"layer '{spec}' is constant with respect to the input (a weight, or computed from weights "
                "only); choose a layer the image reaches"
            )
        else:
            raise InputError(f"unknown layer '{spec}'{close_matches(spec, by_name)}")
        for layer in found:
            chosen[layer.index] = layer
    return [chosen[i] for i in sorted(chosen)]


def auto_layers(layers: Sequence[Layer], count: int = AUTO_COUNT) -> list[Layer]:
    """About `count` evenly spaced activation outputs that still have spatial extent (before the head)."""
    spatial = [layer for layer in layers if _spatial_size(layer) > 1]
    pool = [layer for layer in spatial if layer.activation] or spatial or list(layers)
    if len(pool) <= count:
        return list(pool)
    return [pool[round((i + 1) * len(pool) / count) - 1] for i in range(count)]


def _spatial_size(layer: Layer) -> int:
    """Positions of a feature map: H*W of a rank-4 tensor, tokens of (N, tokens, dim); 1 for vectors.

    A rank-4 tensor may be NCHW or NHWC; the smaller reading is taken, so that a pooled
    (N, C, 1, 1) tensor counts as one position whichever layout it has.
    """
    if not layer.shape or len(layer.shape) < 3:
        return 1
    dims = [d if isinstance(d, int) else 1 for d in layer.shape]
    if len(dims) == 4:
        return min(dims[2] * dims[3], dims[1] * dims[2])
    return dims[1]  # (N, tokens, dim)


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
