"""Graph normalisation: an ordered list of small passes that make real exports convertible.

Each pass is a function `model -> (model, what_changed | None)`; the list `passes()` is the
pipeline's documentation. Tensor names of the original graph are kept, so users choose layers by
the names their exporter wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .errors import ConversionError, InputError
from .load import default_opset

Pass = Callable[[onnx.ModelProto], "tuple[onnx.ModelProto, str | None]"]

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
BATCH = "N"
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: Above this many bytes of activations per sample an analysis cannot run on any device we target.
MAX_BYTES_PER_SAMPLE = 16 * 2**30


@dataclass(frozen=True)
class PassReport:
    """A pass that changed the graph, and what it changed."""

    name: str
    detail: str


@dataclass(frozen=True)
class NormalisedModel:
    """A graph ready for onnx2torch: one image input with a free batch dim, weights as initializers."""

    proto: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]  # the model's own input dims at batch 1, in the model's layout
    passes: tuple[PassReport, ...]

    @property
    def opset(self) -> int:
        return default_opset(self.proto)


def normalise(
    model: onnx.ModelProto, input_name: str | None = None, input_shape: Sequence[int] | None = None
) -> NormalisedModel:
    """Run every pass in order on a copy of `model`; report the ones that changed something."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    reports = []
    for step in passes(input_name, input_shape):
        work, detail = step(work)
        if detail:
            reports.append(PassReport(step.__name__, detail))
    name = image_input(work, input_name).name
    shape = tuple(_dims(image_input(work, name)))
    _check_memory(work, name, shape)
    _check_finite_weights(work)
    return NormalisedModel(work, name, (1, *shape[1:]), tuple(reports))


def passes(input_name: str | None, input_shape: Sequence[int] | None) -> list[Pass]:
    """The pipeline, in the order the fixes have to run."""

    def fix_input_shape(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
        return _fix_input_shape(model, input_name, input_shape)

    return [
        lower_ir_version,
        constants_to_initializers,
        drop_initializer_inputs,
        fix_input_shape,
        remove_inference_noops,
        fold_constants,
        expand_batch_constants,
        convert_opset,
        drop_unsupported_attributes,
        infer_shapes,
        rewrite_asymmetric_average_pool,
        free_batch_dim,
        infer_shapes,
    ]


# --- the passes -------------------------------------------------------------------------------


#: The newest IR version that every onnxruntime this package supports (>= 1.18) can load.
RUNTIME_MAX_IR = 10


def lower_ir_version(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`onnx.helper.make_model` writes the newest IR version (14 with onnx 1.23), which onnxruntime
    refuses as unknown; the IR that the graph's opsets need (at least RUNTIME_MAX_IR) is enough."""
    if model.ir_version <= RUNTIME_MAX_IR:
        return model, None
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    target = max(RUNTIME_MAX_IR, needed)
    if target >= model.ir_version:
        return model, None
    before, model.ir_version = model.ir_version, target
    return model, f"IR version {before} -> {target}"


def constants_to_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`Constant` nodes become initializers: onnx2torch's converters read weights from initializers."""
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            _append_initializer(graph, node.output[0], _constant_value(node))
            moved += 1
        else:
            kept.append(node)
    if not moved:
        return model, None
    _replace_nodes(graph, kept)
    return model, f"{moved} Constant nodes -> initializers"


def drop_initializer_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """IR-3 graphs (Caffe2 exports) list every weight as a graph input too."""
    graph = model.graph
    names = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in names]
    dropped = len(graph.input) - len(inputs)
    if not dropped:
        return model, None
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 4 is the first where weights need not be inputs
    return model, f"{dropped} initializers removed from the graph inputs"


def remove_inference_noops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`Dropout` and `Identity` do nothing at inference; onnx2torch wires Dropout's mask wrongly."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    graph_outputs = {value.name for value in graph.output}
    graph_inputs = {value.name for value in graph.input}
    kept, removed = [], 0
    renames: dict[str, str] = {}
    for node in graph.node:
        noop = node.op_type in ("Dropout", "Identity") and node.domain in ("", "ai.onnx")
        source = node.input[0] if node.input else ""
        if not noop or source in constants or (len(node.output) > 1 and _is_used(graph, node.output[1])):
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
    _replace_nodes(graph, kept)
    _rename_tensors(graph, _resolve_chains(renames))
    return model, f"{removed} Dropout/Identity nodes removed"


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Evaluate nodes whose inputs are all constants (ConstantOfShape weights, Identity(weight), ...)."""
    graph = model.graph
    opset = default_opset(model)
    constants = {init.name: init for init in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        if not _foldable(node, constants):
            kept.append(node)
            continue
        feeds = {name: numpy_helper.to_array(constants[name]) for name in node.input if name}
        try:
            values = ReferenceEvaluator(_single_node_model(node, constants, opset)).run(None, feeds)
        except Exception:  # the reference runtime can't evaluate it: leave the node for onnx2torch
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                constants[name] = _append_initializer(graph, name, np.asarray(value))
        folded += 1
    if not folded:
        return model, None
    _replace_nodes(graph, kept)
    _drop_unused_initializers(graph)
    return model, f"{folded} constant nodes folded into initializers"


def convert_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Move to the nearest opset at which onnx2torch has a converter for every op."""
    opset = default_opset(model)
    if not unconvertible_nodes(model, opset):
        return model, None
    candidates = sorted({v for v in (11, 13, 14, 15, 16, 17) if v > opset}) if opset < 17 else [17]
    for target in candidates:
        try:
            converted = onnx.version_converter.convert_version(model, target)
        except Exception:
            continue
        if not unconvertible_nodes(converted, target):
            return converted, f"opset {opset} -> {target}"
    return model, None  # convert.py names the op that stays unsupported


def drop_unsupported_attributes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Attributes onnx2torch refuses although they change nothing here (`allowzero` with no 0)."""
    changed = 0
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and _attribute(node, "allowzero") == 1 and node.input[1] in constants:
            if 0 not in numpy_helper.to_array(constants[node.input[1]]).tolist():
                _remove_attribute(node, "allowzero")
                changed += 1
        if node.op_type.startswith("Reduce") and _attribute(node, "noop_with_empty_axes") == 0:
            _remove_attribute(node, "noop_with_empty_axes")
            changed += 1
    return model, (f"{changed} no-op attributes dropped" if changed else None)


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Shapes for every tensor: onnx's inference with data propagation, onnxruntime's as fallback.

    Inference runs on a skeleton without the large weights (their shapes suffice; copying
    hundreds of MB of weights took most of the time, and models over 2 GB cannot be serialised
    for it at all); the shapes found are copied back.
    """
    before = len(model.graph.value_info)
    # Stale shapes (from a hard-coded batch) would win over new ones, the outputs' included.
    del model.graph.value_info[:]
    _clear_output_shapes(model.graph)
    skeleton = _skeleton(model)
    try:
        inferred = shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception as err:
        raise ConversionError(f"shape inference failed: {_first_line(err)}") from None
    if _missing_shapes(inferred):
        inferred = _symbolic_shape_inference(inferred) or inferred
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, found in zip(model.graph.output, inferred.graph.output):
        output.CopyFrom(found)
    added = len(model.graph.value_info) - before
    return model, (f"shapes inferred for {added} tensors" if added > 0 else None)


def rewrite_asymmetric_average_pool(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Asymmetric AveragePool padding (Caffe2 Inception) -> exact Pad + AveragePool (+ count fix)."""
    graph = model.graph
    shapes = _shape_table(model)
    nodes, rewritten = [], 0
    for node in graph.node:
        pads = _attribute(node, "pads")
        if node.op_type != "AveragePool" or not pads or _symmetric(pads):
            nodes.append(node)
            continue
        nodes.extend(_pad_then_pool(graph, node, pads, shapes.get(node.input[0]), default_opset(model)))
        rewritten += 1
    if not rewritten:
        return model, None
    _replace_nodes(graph, nodes)
    return model, f"{rewritten} asymmetric AveragePool -> Pad + AveragePool"


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
    _replace_nodes(graph, nodes)
    return model, f"{expanded} batch-1 constants in Concat expanded to the batch"


def _batch_one_constant(init: onnx.TensorProto | None, concat: onnx.NodeProto) -> bool:
    """A constant of shape (1, ...) concatenated along an axis other than 0."""
    if init is None or len(init.dims) < 2 or init.dims[0] != 1:
        return False
    return (_attribute(concat, "axis") or 0) % len(init.dims) != 0


def _expand_to_batch(graph: onnx.GraphProto, constant: onnx.TensorProto, like: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes computing `Expand(constant, [dim 0 of like, *constant.shape[1:]])`."""
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}__first"))
    graph.initializer.append(numpy_helper.from_array(np.array(constant.dims[1:], dtype=np.int64), f"{prefix}__rest"))
    return [
        helper.make_node("Shape", [like], [f"{prefix}__shape"], name=f"{prefix}__shape"),
        helper.make_node("Gather", [f"{prefix}__shape", f"{prefix}__first"], [f"{prefix}__n"], name=f"{prefix}__n", axis=0),
        helper.make_node("Concat", [f"{prefix}__n", f"{prefix}__rest"], [f"{prefix}__target"], name=f"{prefix}__target", axis=0),
        helper.make_node("Expand", [constant.name, f"{prefix}__target"], [f"{prefix}__expanded"], name=f"{prefix}__expand"),
    ]


def _free_batch_once(model: onnx.ModelProto) -> int:
    graph = model.graph
    shapes = _shape_table(model)
    constants = {init.name: init for init in graph.initializer}
    uses = _use_counts(graph)
    freed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in constants:
            continue
        data_shape = shapes.get(node.input[0])
        target = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
        if not data_shape or data_shape[0] != BATCH or target.size == 0 or target[0] != 1:
            continue
        if _attribute(node, "allowzero") == 1:
            if 0 in target.tolist():
                continue
            _remove_attribute(node, "allowzero")
        target = target.copy()
        target[0] = 0
        new_name = node.input[1] if uses[node.input[1]] == 1 else f"{node.input[1]}__batch_free"
        _set_initializer(graph, numpy_helper.from_array(target, new_name))
        node.input[1] = new_name
        freed += 1
    return freed


# --- the image input ----------------------------------------------------------------------------


def image_input(model: onnx.ModelProto, name: str | None = None) -> onnx.ValueInfoProto:
    """The float rank-4 graph input that takes the image: the only one, or the one named."""
    constants = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in constants]
    if not inputs:
        raise InputError("the graph has no input (every input is a constant); export the model with its image input")
    if name is not None:
        chosen = [value for value in inputs if value.name == name]
        if not chosen:
            from .errors import close_matches

            raise InputError(f"the graph has no input named '{name}'{close_matches(name, [v.name for v in inputs])}")
        value = chosen[0]
    elif len(inputs) == 1:
        value = inputs[0]
    else:
        raise InputError(
            f"the graph has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); name the image one with --input"
        )
    elem_type = value.type.tensor_type.elem_type
    if elem_type not in FLOAT_TYPES:
        type_name = onnx.TensorProto.DataType.Name(elem_type)
        raise InputError(
            f"input '{value.name}' is {type_name}, not float: the analysis needs a differentiable float image input; "
            "export the model with a float input (move the cast into the graph)"
        )
    rank = len(value.type.tensor_type.shape.dim)
    if rank != 4:
        raise InputError(f"input '{value.name}' has rank {rank}; an image input must be rank 4 (NCHW or NHWC)")
    return value


def _fix_input_shape(
    model: onnx.ModelProto, name: str | None, shape: Sequence[int] | None
) -> tuple[onnx.ModelProto, str | None]:
    """Fix the image input's dims from `shape` (or check them); the batch dim becomes symbolic."""
    value = image_input(model, name)
    dims = value.type.tensor_type.shape.dim
    current = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if shape is not None:
        if len(shape) != 4 or any(int(s) <= 0 for s in shape):
            raise InputError(f"--input-shape {','.join(map(str, shape))}: give four positive sizes N,C,H,W (model's order)")
        for axis, (have, want) in enumerate(zip(current[1:], shape[1:]), start=1):
            if have is not None and have != want:
                raise InputError(
                    f"--input-shape: input '{value.name}' has dim {axis} fixed at {have}, not {want}; "
                    f"use {','.join(str(c or s) for c, s in zip(current, shape))}"
                )
        fixed = [int(s) for s in shape[1:]]
    else:
        if any(c is None for c in current[1:]):
            shown = ",".join(str(c) if c else "?" for c in current)
            raise InputError(f"input '{value.name}' has dynamic dims ({shown}); give them with --input-shape N,C,H,W")
        fixed = [int(c) for c in current[1:]]
    before = [d.dim_param or d.dim_value for d in dims]
    dims[0].Clear()
    dims[0].dim_param = BATCH
    for dim, size in zip(dims[1:], fixed):
        dim.Clear()
        dim.dim_value = size
    after = [d.dim_param or d.dim_value for d in dims]
    # Intermediate shapes recorded for the old dims would now be stale.
    del model.graph.value_info[:]
    _check_memory(model, value.name, [1, *fixed])  # before any pass allocates per-pixel arrays
    _clear_output_shapes(model.graph)
    return model, (f"input '{value.name}' {before} -> {after}" if before != after else None)


def _clear_output_shapes(graph: onnx.GraphProto) -> None:
    """Output shapes are derived from the input's; inference writes them again."""
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")


def _check_finite_weights(model: onnx.ModelProto) -> None:
    """NaN weights make every feature NaN; name the tensor instead of failing the cross-check later."""
    for init in model.graph.initializer:
        if init.data_type not in FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(init)
        bad = int(np.isnan(values).sum())
        if bad:
            raise InputError(
                f"weight '{init.name}' has {bad} NaN values (of {values.size}); the model is corrupt "
                "or was exported from a diverged training run"
            )


def _check_memory(model: onnx.ModelProto, name: str, shape: Sequence[int]) -> None:
    """Refuse shapes whose activations could never fit, with the estimate (the input alone when
    intermediate shapes are not known yet)."""
    per_sample = 4 * math.prod(shape[1:])
    for value in model.graph.value_info:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims[1:]):
            per_sample += 4 * math.prod(dims[1:])
    if per_sample > MAX_BYTES_PER_SAMPLE:
        raise InputError(
            f"input '{name}' of shape {list(shape)} needs about {per_sample / 2**30:.0f} GiB of activations per sample "
            f"(limit {MAX_BYTES_PER_SAMPLE / 2**30:.0f} GiB); give a smaller --input-shape"
        )


# --- converter support -----------------------------------------------------------------------


def unconvertible_nodes(model: onnx.ModelProto, opset: int | None = None) -> list[tuple[onnx.NodeProto, int | None]]:
    """Nodes for which onnx2torch has no converter at this opset, with the op's schema version."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    if opset is not None:
        opsets[""] = opset
    missing = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = opsets.get(domain)
        try:
            since = onnx.defs.get_schema(node.op_type, max_inclusive_version=version or 1, domain=domain).since_version
        except Exception:
            since = None
        if OperationDescription(domain, node.op_type, since or version or 0) not in _CONVERTER_REGISTRY:
            missing.append((node, since or version))
    return missing


# --- helpers -----------------------------------------------------------------------------------


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(attr.floats, dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(attr.ints, dtype=np.int64)
    raise ConversionError(f"Constant node '{node.name}' holds a '{attr.name}', which cannot become a weight")


def _foldable(node: onnx.NodeProto, constants: dict) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC_OPS:
        return False
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return False
    inputs = [name for name in node.input if name]
    return bool(inputs) and all(name in constants for name in inputs)


def _single_node_model(node: onnx.NodeProto, constants: dict, opset: int) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(name, constants[name].data_type, list(constants[name].dims))
        for name in dict.fromkeys(n for n in node.input if n)
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _is_used(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in node.input for node in graph.node) or any(v.name == name for v in graph.output)


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _resolve_chains(renames: dict[str, str]) -> dict[str, str]:
    resolved = {}
    for old in renames:
        new = renames[old]
        while new in renames and renames[new] != new:
            new = renames[new]
        resolved[old] = new
    return resolved


def _rename_tensors(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
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


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Delete in place: rebuilding the list would copy every (possibly huge) weight."""
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


#: Float initializers above this many elements are left out of the shape-inference skeleton.
SKELETON_MAX_ELEMENTS = 4096


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its large float weights replaced by graph inputs of the same type and shape.

    Small and integer initializers stay: data propagation needs their values (Reshape targets).
    """
    graph = model.graph
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    target = skeleton.graph
    target.name = graph.name
    target.node.extend(graph.node)
    target.input.extend(graph.input)
    target.output.extend(graph.output)
    inputs = {value.name for value in graph.input}
    for init in graph.initializer:
        large = init.data_type in FLOAT_TYPES and math.prod(init.dims) > SKELETON_MAX_ELEMENTS
        if not large:
            target.initializer.append(init)
        elif init.name not in inputs:
            target.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skeleton


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _append_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> onnx.TensorProto:
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


def _set_initializer(graph: onnx.GraphProto, tensor: onnx.TensorProto) -> None:
    for i, init in enumerate(graph.initializer):
        if init.name == tensor.name:
            graph.initializer[i].CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def _attribute(node: onnx.NodeProto, name: str):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def _remove_attribute(node: onnx.NodeProto, name: str) -> None:
    kept = [attr for attr in node.attribute if attr.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _shape_table(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    graph = model.graph
    return {
        value.name: _dims(value)
        for value in list(graph.input) + list(graph.value_info) + list(graph.output)
        if value.type.tensor_type.HasField("shape")
    }


def _missing_shapes(model: onnx.ModelProto) -> bool:
    known = set(_shape_table(model)) | {init.name for init in model.graph.initializer}
    return any(name and name not in known for node in model.graph.node for name in node.output)


def _symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's inference; it saves a debug copy into the working folder when incomplete,
    so it runs inside a temporary one."""
    import os
    import tempfile

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:
            return None
        finally:
            os.chdir(here)


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
    kernel = list(_attribute(node, "kernel_shape"))
    strides = list(_attribute(node, "strides") or [1] * half)
    count_pad = bool(_attribute(node, "count_include_pad") or 0)
    if _attribute(node, "ceil_mode"):
        raise ConversionError(f"AveragePool '{node.name}' combines asymmetric pads with ceil_mode; re-export without it")
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
        raise ConversionError(f"AveragePool '{node.name}' has asymmetric pads and an unknown input shape")
    scale = _valid_count_scale(in_shape[2:], kernel, strides, pads)
    scale_name = f"{base}__count_scale"
    graph.initializer.append(numpy_helper.from_array(scale, scale_name))
    return [pad, pool, helper.make_node("Mul", [pooled, scale_name], [base], name=f"{node.name}__count")]


def _valid_count_scale(spatial, kernel, strides, pads) -> np.ndarray:
    """kernel size / number of real (unpadded) inputs under each output window."""
    half = len(pads) // 2
    ones = np.pad(np.ones(spatial, dtype=np.float64), [(pads[i], pads[i + half]) for i in range(half)])
    out = [(ones.shape[i] - kernel[i]) // strides[i] + 1 for i in range(half)]
    counts = np.zeros(out)
    for index in np.ndindex(*out):
        window = tuple(slice(index[i] * strides[i], index[i] * strides[i] + kernel[i]) for i in range(half))
        counts[index] = ones[window].sum()
    return (math.prod(kernel) / counts).astype(np.float32)[None, None]
