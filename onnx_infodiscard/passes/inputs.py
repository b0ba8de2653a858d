"""Passes and checks on the graph's inputs: which one is the image, its fixed dims, what it costs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError, close_matches
from .proto import BATCH, FLOAT_TYPES, clear_output_shapes, node_inputs

#: Above this many bytes of activations per sample an analysis cannot run on any device we target.
MAX_BYTES_PER_SAMPLE = 16 * 2**30


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


def drop_unread_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Graph inputs that no node reads (a Keras `Model.export` graph has two) are dropped, so the
    image input is the only one left instead of the model being refused as multi-input."""
    graph = model.graph
    read = {name for node in graph.node for name in node_inputs(node)} | {value.name for value in graph.output}
    unread = [value.name for value in graph.input if value.name not in read]
    if not unread or len(unread) == len(graph.input):
        return model, None
    kept = [value for value in graph.input if value.name in read]
    del graph.input[:]
    graph.input.extend(kept)
    return model, f"inputs no node reads dropped: {', '.join(repr(name) for name in unread)}"


def image_input(model: onnx.ModelProto, name: str | None = None) -> onnx.ValueInfoProto:
    """The float rank-4 graph input that takes the image: the only one, or the one named."""
    constants = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in constants]
    if not inputs:
        raise InputError("the graph has no input (every input is a constant); export the model with its image input")
    if name is not None:
        chosen = [value for value in inputs if value.name == name]
        if not chosen:
            raise InputError(f"the graph has no input named '{name}'{close_matches(name, [v.name for v in inputs])}")
        value = chosen[0]
    elif len(inputs) == 1:
        value = inputs[0]
    else:
        raise InputError(
            f"the graph has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); name the image one",
            option="input_name",
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


def fix_input_shape(
    model: onnx.ModelProto, name: str | None, shape: Sequence[int] | None
) -> tuple[onnx.ModelProto, str | None]:
    """Fix the image input's dims from `shape` (or check them); the batch dim becomes symbolic."""
    value = image_input(model, name)
    dims = value.type.tensor_type.shape.dim
    current = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    fixed = _fixed_dims(value.name, current, shape)
    before = [d.dim_param or d.dim_value for d in dims]
    dims[0].Clear()
    dims[0].dim_param = BATCH
    for dim, size in zip(dims[1:], fixed):
        dim.Clear()
        dim.dim_value = size
    after = [d.dim_param or d.dim_value for d in dims]
    # Intermediate shapes recorded for the old dims would now be stale.
    del model.graph.value_info[:]
    check_memory(model, value.name, [1, *fixed])  # before any pass allocates per-pixel arrays
    clear_output_shapes(model.graph)
    return model, (f"input '{value.name}' {before} -> {after}" if before != after else None)


def _fixed_dims(name: str, current: list[int | None], shape: Sequence[int] | None) -> list[int]:
    """The non-batch dims: the model's own, checked against `shape` when given."""
    if shape is not None:
        if len(shape) != 4 or any(int(s) <= 0 for s in shape):
            raise InputError(
                f"{','.join(map(str, shape))}: give four positive sizes N,C,H,W (model's order)", option="input_shape"
            )
        for axis, (have, want) in enumerate(zip(current[1:], shape[1:]), start=1):
            if have is not None and have != want:
                raise InputError(
                    f"input '{name}' has dim {axis} fixed at {have}, not {want}; "
                    f"use {','.join(str(c or s) for c, s in zip(current, shape))}",
                    option="input_shape",
                )
        return [int(s) for s in shape[1:]]
    if any(c is None for c in current[1:]):
        shown = ",".join(str(c) if c else "?" for c in current)
        raise InputError(f"input '{name}' has dynamic dims ({shown}); give them as N,C,H,W", option="input_shape")
    return [int(c) for c in current[1:]]


def check_finite_weights(model: onnx.ModelProto) -> None:
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


def check_memory(model: onnx.ModelProto, name: str, shape: Sequence[int]) -> None:
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
            f"(limit {MAX_BYTES_PER_SAMPLE / 2**30:.0f} GiB); give a smaller input shape",
            option="input_shape",
        )
