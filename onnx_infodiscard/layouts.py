"""The spatial layout of every tensor of a graph: NCHW, NHWC, tokens, windows or a vector.

`auto` must pick feature maps, and a rank-4 tensor is not one by rank alone: Swin stores its
maps channels-last (N, 56, 56, 384), MaxViT and Swin partition them into windows (N·64, 49, C).
The layout is read from the producing ops where they define it (Conv and pooling are NCHW in
ONNX; Transpose permutes a known layout; elementwise ops keep it) and checked against the shape:
a map's spatial dims follow the input's aspect ratio at some stride.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .passes.proto import node_inputs

NCHW, NHWC, TOKENS, WINDOWS, VECTOR, OTHER, UNKNOWN = "nchw", "nhwc", "tokens", "windows", "vector", "other", "unknown"
#: Layouts whose positions are image positions: the feature maps `auto` offers.
SPATIAL = (NCHW, NHWC, TOKENS)
#: Ops that ONNX defines on N×C×H×W tensors.
NCHW_OPS = {
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "InstanceNormalization",
    "LRN",
    "DepthToSpace",
    "SpaceToDepth",
    "MaxUnpool",
    "ConvInteger",
    "QLinearConv",
    "DeformConv",
    "GridSample",
    "RoiAlign",
}
#: Activations: elementwise, so they keep the layout; `layers` marks their outputs as candidate maps.
ACTIVATIONS = {
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Mish",
    "Clip",
    "ThresholdedRelu",
}
#: Ops that pass a layout through (elementwise, or acting on values only).
KEEPS_LAYOUT = ACTIVATIONS | {
    "Erf",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Identity",
    "Dropout",
    "Cast",
    "Where",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Reciprocal",
    "LayerNormalization",
    "Softmax",
    "Pad",
    "Resize",
    "Upsample",
    "Slice",
    "Concat",
    "QuantizeLinear",
    "DequantizeLinear",
}


def is_per_sample(dim0, batch_symbol) -> bool:
    """The first dim is the batch (not batch × windows): 1 at batch 1, or the input's batch symbol."""
    return dim0 == 1 or (isinstance(dim0, str) and dim0 == batch_symbol)


def fits_aspect(h, w, height: int, width: int) -> bool:
    """(h, w) is the input's (height, width) at one stride: h·W ≈ w·H within rounding of the stride."""
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        return False
    return h <= 2 * height and w <= 2 * width and abs(h * width - w * height) <= height + width


def fits_bounds(h, w, height: int, width: int) -> bool:
    """(h, w) could be spatial dims with unequal strides (a text recogniser's (1, W/4)): no larger than the input."""
    return isinstance(h, int) and isinstance(w, int) and 1 <= h <= 2 * height and 1 <= w <= 2 * width


def from_shape(shape: Sequence | None, hint: str, batch_symbol, height: int, width: int) -> str:
    """The layout of a tensor of `shape`, `hint` being what its producing op says (or UNKNOWN)."""
    if shape is None:
        return UNKNOWN
    rank = len(shape)
    if rank <= 2:
        return VECTOR
    if not is_per_sample(shape[0], batch_symbol):
        return WINDOWS if isinstance(shape[0], int) else OTHER  # batch × windows, or a dim nobody resolved
    if rank >= 5:
        return WINDOWS
    if rank == 3:
        return TOKENS if isinstance(shape[1], int) and shape[1] > 1 and isinstance(shape[2], int) else OTHER
    _, a, b, c = shape
    if hint == NCHW and fits_bounds(b, c, height, width):
        return NCHW
    if hint == NHWC and fits_bounds(a, b, height, width):
        return NHWC
    for fits in (fits_aspect, fits_bounds):
        nchw, nhwc = fits(b, c, height, width), fits(a, b, height, width)
        if nchw or nhwc:
            return NCHW if nchw else NHWC  # both: ONNX's own convention
    return OTHER


def transposed(layout: str, perm: Sequence[int]) -> str:
    """The layout after Transpose(perm) of a rank-4 tensor in `layout`."""
    axes = {NCHW: "NCHW", NHWC: "NHWC"}.get(layout)
    if axes is None or len(perm) != 4:
        return UNKNOWN
    out = "".join(axes[p] for p in perm)
    return {"NCHW": NCHW, "NHWC": NHWC}.get(out, OTHER)


def layouts(
    graph: onnx.GraphProto,
    input_name: str,
    input_layout: str,
    input_shape: Sequence[int],
    shapes: Mapping[str, Sequence],
) -> dict[str, str]:
    """The layout of every tensor the input reaches, in one pass in topological order."""
    if input_layout == NHWC:
        height, width = input_shape[1], input_shape[2]
    else:
        height, width = input_shape[2], input_shape[3]
    batch_symbol = (shapes.get(input_name) or [None])[0]
    found = {input_name: input_layout}
    for node in graph.node:
        reached = [name for name in node_inputs(node) if name in found]
        if not reached:
            continue
        hint = _hint(node, reached, found, shapes)
        for name in node.output:
            if name:
                found[name] = from_shape(shapes.get(name), hint, batch_symbol, height, width)
    return found


def _hint(node: onnx.NodeProto, reached: Sequence[str], found: Mapping[str, str], shapes: Mapping) -> str:
    """What the op itself says about its output's layout."""
    if node.op_type in NCHW_OPS:
        return NCHW
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
        return transposed(found[node.input[0]], perm) if node.input[0] in found else UNKNOWN
    if node.op_type in KEEPS_LAYOUT:
        rank4 = [found[name] for name in reached if len(shapes.get(name) or ()) == 4 and found[name] in (NCHW, NHWC)]
        if rank4:
            return rank4[0]
    return UNKNOWN


def concrete_shapes(
    model: onnx.ModelProto, input_name: str, input_shape: Sequence[int], names: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """Shapes of `names` from one onnxruntime run at batch 1, for tensors static inference left unknown.

    Exporters that keep the batch dynamic (TorchScript's Swin) route shapes through Shape/Gather/
    Concat chains that no static inference resolves. An empty dict when onnxruntime cannot run it.
    """
    import onnxruntime as ort

    wanted = [name for name in dict.fromkeys(names) if name and name != input_name]
    if not wanted:
        return {}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.full(tuple(input_shape), 0.5, dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
            values = session.run(wanted, {input_name: x})
    except Exception:  # an op onnxruntime lacks, a graph it refuses: static shapes are all there is
        return {}
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(wanted, values)}


def merged_shape(symbolic: Sequence | None, concrete: Sequence[int] | None, batch=None) -> tuple | None:
    """The static shape with its unknown dims filled from the concrete run (batch 1); a per-sample
    first dim shows as the input's batch symbol `batch`."""
    if concrete is None:
        return tuple(symbolic) if symbolic is not None else None
    if symbolic is None or len(symbolic) != len(concrete):
        symbolic = concrete
    first = batch if batch is not None and concrete and concrete[0] == 1 else concrete[0] if concrete else None
    dims = zip(symbolic, concrete)
    return tuple(first if i == 0 else (s if isinstance(s, int) else c) for i, (s, c) in enumerate(dims))


def positions(shape: Sequence | None, layout: str) -> int:
    """Image positions of a feature map: H·W of NCHW/NHWC, L of tokens; 1 for anything else."""
    if not shape:
        return 1
    dims = [d if isinstance(d, int) else 1 for d in shape]
    if layout == NCHW:
        return dims[2] * dims[3]
    if layout == NHWC:
        return dims[1] * dims[2]
    if layout == TOKENS:
        return dims[1]
    return 1
