"""Shapes for every tensor (onnx2torch and the later passes read them)."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from ..errors import ConversionError
from .proto import FLOAT_TYPES, clear_output_shapes, first_line, shape_table

#: Float initializers above this many elements are left out of the shape-inference skeleton.
SKELETON_MAX_ELEMENTS = 4096
#: onnxruntime's symbolic inference runs in a child process; past this it is given up.
SYMBOLIC_TIMEOUT_S = 600


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Shapes for every tensor: onnx's inference with data propagation, onnxruntime's as fallback.

    Inference runs on a skeleton without the large weights (their shapes suffice; copying
    hundreds of MB of weights took most of the time, and models over 2 GB cannot be serialised
    for it at all); the shapes found are copied back.
    """
    before = len(model.graph.value_info)
    # Stale shapes (from a hard-coded batch) would win over new ones, the outputs' included.
    del model.graph.value_info[:]
    clear_output_shapes(model.graph)
    bare = skeleton(model)
    try:
        inferred = shape_inference.infer_shapes(bare, data_prop=True)
    except Exception as err:
        raise ConversionError(f"infer_shapes: onnx's shape inference failed: {first_line(err)}") from None
    if missing_shapes(inferred):
        inferred = symbolic_shape_inference(inferred) or inferred
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, found in zip(model.graph.output, inferred.graph.output):
        output.CopyFrom(found)
    added = len(model.graph.value_info) - before
    return model, (f"shapes inferred for {added} tensors" if added > 0 else None)


def missing_shapes(model: onnx.ModelProto) -> bool:
    """Whether some node output has no recorded shape."""
    known = set(shape_table(model)) | {init.name for init in model.graph.initializer}
    return any(name and name not in known for node in model.graph.node for name in node.output)


def symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic inference, or None where it fails.

    Its `infer_shapes` writes a debug copy (and a UUID-named external-data file) into the
    current folder whenever its inference stays incomplete. So it runs as its own command in a
    child process whose working folder is a scratch directory, with the model passed by absolute
    path: nothing is written beside the user's files and this process's folder never changes.
    """
    with tempfile.TemporaryDirectory(prefix="infodiscard-shapes-") as scratch:
        source, target = Path(scratch, "in.onnx"), Path(scratch, "out.onnx")
        try:
            onnx.save_model(model, source)
        except ValueError:  # over protobuf's 2 GB: the skeleton keeps only small weights, so rare
            return None
        command = [
            sys.executable, "-m", "onnxruntime.tools.symbolic_shape_infer",
            "--input", str(source), "--output", str(target), "--auto_merge",
        ]  # fmt: skip
        try:
            subprocess.run(command, cwd=scratch, capture_output=True, timeout=SYMBOLIC_TIMEOUT_S, check=True)
        except (subprocess.SubprocessError, OSError):
            return None
        return onnx.load_model(target) if target.is_file() else None


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its large float weights replaced by graph inputs of the same type and shape.

    Small and integer initializers stay: data propagation needs their values (Reshape targets).
    """
    graph = model.graph
    bare = onnx.ModelProto()
    bare.ir_version = max(model.ir_version, 4)
    bare.opset_import.extend(model.opset_import)
    bare.functions.extend(model.functions)
    target = bare.graph
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
    return bare
