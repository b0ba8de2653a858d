"""Versions: an IR version onnxruntime loads, and an opset at which onnx2torch has every op."""

from __future__ import annotations

import onnx
from onnx import helper

from .proto import default_opset, first_line
from .support import unconvertible_nodes

#: The newest IR version that every onnxruntime this package supports (>= 1.18) can load.
RUNTIME_MAX_IR = 10
#: Opsets onnx2torch's converters are written for; newer graphs are brought down to the last.
CONVERTER_OPSETS = (11, 13, 14, 15, 16, 17)


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


def convert_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Move to the nearest opset at which onnx2torch has a converter for every op.

    Where no opset works, the graph is kept and the detail says why, naming the ops that stay
    unconvertible and what onnx's version converter said: a layer before them can still be
    analysed, so this is not an error here (convert.py raises if a chosen layer needs them).
    """
    opset = default_opset(model)
    missing = unconvertible_nodes(model, opset)
    if not missing:
        return model, None
    highest = CONVERTER_OPSETS[-1]
    candidates = [v for v in CONVERTER_OPSETS if v > opset] if opset < highest else [highest]
    failures = []
    for target in candidates:
        try:
            converted = onnx.version_converter.convert_version(model, target)
        except Exception as err:
            failures.append(f"to {target}: {first_line(err)}")
            continue
        still = unconvertible_nodes(converted, target)
        if not still:
            return converted, f"opset {opset} -> {target}"
        failures.append(f"to {target}: {_named(still)} still unconvertible")
    reason = "; ".join(failures[-2:]) if failures else "no lower opset to try"
    return model, f"opset {opset} kept: onnx2torch has no converter for {_named(missing)} ({reason})"


def _named(nodes: list[tuple[onnx.NodeProto, int | None]]) -> str:
    """`Gelu-20 (node 'g1'), Split-18 (node 's')`, the first of each op."""
    seen: dict[str, str] = {}
    for node, version in nodes:
        seen.setdefault(node.op_type, f"{node.op_type}-{version} (node '{node.name or node.output[0]}')")
    return ", ".join(seen.values())
