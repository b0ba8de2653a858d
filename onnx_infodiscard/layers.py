"""Candidate layers (node outputs) of a normalised graph, and choosing among them."""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import onnx

from . import layouts as L
from .errors import InputError, close_matches
from .layouts import ACTIVATIONS
from .passes import NormalisedModel, shape_table
from .passes.proto import node_inputs
from .preprocess import guess_layout

#: Ops whose outputs carry no gradient back to any input.
NON_DIFFERENTIABLE = frozenset(
    "ArgMax ArgMin Round Floor Ceil Sign Shape Size NonZero Equal Less LessOrEqual Greater GreaterOrEqual Not And "
    "Or Xor IsNaN IsInf ConstantOfShape Range EyeLike OneHot QuantizeLinear RandomNormalLike RandomUniformLike "
    "BitShift Mod".split()
)
#: Ops whose gradient flows only through some input slots (the rest are shapes or indices).
DIFFERENTIABLE_SLOTS = {
    "Reshape": {0},
    "Expand": {0},
    "Tile": {0},
    "Slice": {0},
    "Gather": {0},
    "GatherElements": {0},
    "GatherND": {0},
    "Resize": {0},
    "Upsample": {0},
    "Pad": {0, 2},
    "Squeeze": {0},
    "Unsqueeze": {0},
    "Where": {1, 2},
    "TopK": {0},
    "Split": {0},
    "ReduceMean": {0},
    "ReduceSum": {0},
    "ReduceMax": {0},
    "ReduceMin": {0},
    "ScatterND": {0, 2},
    "ScatterElements": {0, 2},
    "CumSum": {0},
    "Trilu": {0},
}
INTEGER_CAST_TARGETS = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
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
    layout: str = L.UNKNOWN  # nchw, nhwc, tokens (N, L, C), windows (N·windows, ...), vector, other, unknown

    @property
    def spatial(self) -> bool:
        """A feature map over image positions (NCHW, NHWC or tokens) with more than one position."""
        return self.layout in L.SPATIAL and L.positions(self.shape, self.layout) > 1


@dataclass(frozen=True)
class Selection:
    """Layers chosen for a list of specs, with notes on what `auto` could not give."""

    layers: tuple[Layer, ...]
    notes: tuple[str, ...] = ()


def list_layers(model: NormalisedModel) -> list[Layer]:
    """Every node output that depends on the image input, in topological order.

    Depth is the longest path from the input in nodes, over the longest in the graph: it grows
    strictly along every edge, so a layer is always deeper than the layers it reads.
    """
    graph = model.proto.graph
    shapes, layout_shapes = _shapes(model)
    activations = activation_outputs(graph)
    level = {model.input_name: 0}
    produced: list[tuple[onnx.NodeProto, str]] = []
    for node in graph.node:
        parents = [level[name] for name in node_inputs(node) if name in level]
        if not parents:
            continue
        for name in node.output:
            if name:
                level[name] = max(parents) + 1
                produced.append((node, name))
    deepest = max(level.values()) or 1
    input_layout = guess_layout(tuple(model.input_shape))
    layout = L.layouts(graph, model.input_name, input_layout, model.input_shape, layout_shapes)
    return [
        Layer(
            index=i,
            name=name,
            op_type=node.op_type,
            node_name=node.name,
            shape=shapes.get(name),
            depth=level[name] / deepest,
            # an activation reading the input itself (a quantised graph's input saturation) is the
            # input up to clipping, not a map the network computed
            activation=name in activations and level[name] > 1,
            layout=layout.get(name, L.UNKNOWN),
        )
        for i, (node, name) in enumerate(produced)
    ]


def _shapes(model: NormalisedModel) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(shapes to show, shapes to read layouts from): the static shapes, with the dims static inference
    left unknown filled from one onnxruntime run at batch 1 (whose batch dim is then a plain 1)."""
    static = {name: tuple(dims) for name, dims in shape_table(model.proto).items()}
    batch = (static.get(model.input_name) or (None,))[0]
    produced = [name for node in model.proto.graph.node for name in node.output if name]
    unresolved = [name for name in produced if _unresolved(static.get(name), batch)]
    concrete = L.concrete_shapes(model.proto, model.input_name, model.input_shape, unresolved) if unresolved else {}
    shown = {name: L.merged_shape(static.get(name), concrete.get(name), batch) for name in set(static) | set(concrete)}
    return shown, {**static, **concrete}


def _unresolved(shape, batch) -> bool:
    """A shape static inference did not finish: missing, or a symbolic dim other than the batch."""
    if shape is None:
        return True
    return any(isinstance(d, str) and not (i == 0 and d == batch) for i, d in enumerate(shape))


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
        if any(name in reaches for name in node_inputs(node)):
            reaches.update(node.output)
        else:
            names.update(name for name in node.output if name)
    return names


def select_layers(layers: Sequence[Layer], specs: Sequence[str], constants: Collection[str] = ()) -> list[Layer]:
    """Resolve names, indices, globs and `auto` to layers, in graph order, without duplicates.

    `constants`: tensors of the graph that are not layers because the input does not reach them
    (`constant_tensors`); naming one gets that explanation instead of "unknown layer". See
    `selection` for the same with notes on what `auto` could not give.
    """
    return list(selection(layers, specs, constants).layers)


def selection(layers: Sequence[Layer], specs: Sequence[str], constants: Collection[str] = ()) -> Selection:
    """`select_layers`, with a note whenever `auto` kept fewer layers than it asks for, and why."""
    if not layers:
        raise InputError("the graph has no layer that depends on its input")
    chosen: dict[int, Layer] = {}
    notes: list[str] = []
    by_name = {layer.name: layer for layer in layers}
    for spec in specs or ["auto"]:
        spec = spec.strip()
        if spec == "auto":
            found, note = auto_selection(layers)
            notes.extend([note] if note else [])
        else:
            found = _resolve(spec, layers, by_name, constants)
        for layer in found:
            chosen[layer.index] = layer
    return Selection(tuple(chosen[i] for i in sorted(chosen)), tuple(notes))


def _resolve(spec: str, layers: Sequence[Layer], by_name: dict[str, Layer], constants: Collection[str]) -> list[Layer]:
    if spec in by_name:
        return [by_name[spec]]
    if _is_int(spec):
        index = int(spec)
        if not -len(layers) <= index < len(layers):
            raise InputError(
                f"layer index {index} is out of range; the graph has {len(layers)} layers (0..{len(layers) - 1})"
            )
        return [layers[index]]
    if any(ch in spec for ch in "*?["):
        found = [layer for layer in layers if fnmatch.fnmatchcase(layer.name, spec)]
        if not found:
            raise InputError(f"layer pattern '{spec}' matches no layer; list them with `infodiscard layers MODEL`")
        return found
    if spec in constants:
        raise InputError(
            f"layer '{spec}' is constant with respect to the input (a weight, or computed from weights "
            "only); choose a layer the image reaches"
        )
    raise InputError(f"unknown layer '{spec}'{close_matches(spec, by_name)}")


def auto_layers(layers: Sequence[Layer], count: int = AUTO_COUNT) -> list[Layer]:
    """About `count` evenly spaced activation outputs that are feature maps (NCHW, NHWC or tokens)."""
    return auto_selection(layers, count)[0]


def auto_selection(layers: Sequence[Layer], count: int = AUTO_COUNT) -> tuple[list[Layer], str | None]:
    """`auto_layers`, and a note when it keeps fewer than `count` or falls back from activations."""
    spatial = [layer for layer in layers if layer.spatial]
    activations = [layer for layer in spatial if layer.activation]
    pool = activations or spatial or [layers[0]]
    if len(pool) > count:
        return [pool[round((i + 1) * len(pool) / count) - 1] for i in range(count)], None
    if len(pool) == count and activations:
        return list(pool), None
    return list(pool), _shortfall_note(layers, pool, count, bool(activations), bool(spatial))


#: How `auto`'s note names the activations it passed over, by their layout.
PASSED_OVER = {
    L.WINDOWS: "window-partitioned",
    L.VECTOR: "vectors",
    L.OTHER: "of no spatial layout",
    L.UNKNOWN: "of unknown shape",
    L.NCHW: "of one position",
    L.NHWC: "of one position",
    L.TOKENS: "of one token",
}


def _shortfall_note(
    layers: Sequence[Layer], pool: Sequence[Layer], count: int, activations: bool, spatial: bool
) -> str:
    """Why `auto` kept len(pool) layers, not `count` activation maps: what it passed over, and for what."""
    kept = f"auto kept {len(pool)} layer{'s' if len(pool) != 1 else ''} (it takes up to {count} activation maps)"
    if not spatial:
        kept += ", the first layer only: no tensor is a feature map"
    elif not activations:
        kept += ", feature maps that are not activation outputs: the graph has no spatial activation"
    by_layout: dict[str, int] = defaultdict(int)
    for layer in layers:
        if layer.activation and not layer.spatial:
            by_layout[layer.layout] += 1
    reasons = ", ".join(f"{n} {PASSED_OVER.get(kind, kind)}" for kind, n in sorted(by_layout.items()))
    last = pool[-1].index
    unknown = next((layer for layer in layers if layer.layout == L.UNKNOWN and layer.index > last), None)
    after = (
        (
            f"; no shape is known from node '{unknown.node_name}' ({unknown.op_type}) on, so later tensors cannot "
            "be placed (neither shape inference nor onnxruntime runs that op)"
        )
        if unknown
        else ""
    )
    if not reasons and not after:
        return f"{kept}: the graph has only {len(pool)} such feature map{'s' if len(pool) != 1 else ''}"
    return f"{kept}; activations passed over: {reasons or 'none'}{after}; name layers to analyse others"


def check_differentiable(model: NormalisedModel, layers: Sequence[Layer]) -> None:
    """Refuse layers that do not depend on the input differentiably, naming the op that blocks them.

    A node with subgraphs (If, Loop) also depends on the outer-scope tensors its branches read; those
    carry a gradient (an If's condition does not, but its chosen branch's value does).
    """
    graph = model.proto.graph
    reaches = {model.input_name}  # tensors that depend on the input at all
    flows = {model.input_name}  # tensors a gradient can flow back from to the input
    blocker: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        read = node_inputs(node)
        touched = [name for name in read if name in reaches]
        if not touched:
            continue
        slots = _differentiable_slots(node)
        explicit = any(name in flows for i, name in enumerate(node.input) if slots is None or i in slots)
        differentiable = explicit or any(name in flows for name in read[len(node.input) :])
        for out_index, name in enumerate(node.output):
            reaches.add(name)
            if differentiable and not (node.op_type == "TopK" and out_index == 1):
                flows.add(name)
            else:
                upstream = [blocker[n] for n in touched if n in blocker]
                blocker[name] = upstream[0] if upstream else node
    for layer in layers:
        if layer.name not in reaches:
            raise InputError(
                f"layer '{layer.name}' is constant with respect to the input; choose a layer the image reaches"
            )
        if layer.name not in flows:
            node = blocker[layer.name]
            raise InputError(
                f"layer '{layer.name}' depends on the input only through non-differentiable op "
                f"{node.op_type} (node '{node.name}'); choose a layer before it"
            )


def check_single_input(model: NormalisedModel, layers: Sequence[Layer]) -> None:
    """Refuse layers that also read a graph input other than the image: the analysis feeds only the
    image, so such a layer could not be computed (or would be computed from nothing)."""
    graph = model.proto.graph
    constants = {init.name for init in graph.initializer}
    others = [v.name for v in graph.input if v.name != model.input_name and v.name not in constants]
    if not others:
        return
    source = {name: (name, None) for name in others}  # tensor -> (the other input it reads, first node on the way)
    for node in graph.node:
        found = next((source[name] for name in node_inputs(node) if name in source), None)
        if found is not None:
            for name in node.output:
                source[name] = (found[0], found[1] or node)
    for layer in layers:
        if layer.name in source:
            other, node = source[layer.name]
            raise InputError(
                f"layer '{layer.name}' also depends on graph input '{other}' (through node '{node.name}', "
                f"{node.op_type}), which the analysis cannot feed: it feeds only the image input "
                f"'{model.input_name}'; choose a layer before that node, or export the model with '{other}' "
                "as a constant"
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
