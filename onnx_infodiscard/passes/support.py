"""Which ops onnx2torch can convert: the one place that asks onnx2torch."""

from __future__ import annotations

import onnx


def has_converter(op_type: str, domain: str, version: int) -> bool:
    """Whether onnx2torch has a converter for the op at this opset.

    onnx2torch exports no "is this op supported" query; `get_converter` is its public lookup (it
    resolves the op's schema version like its own converter does) and says no by raising
    NotImplementedError, which this wrapper turns into a bool.
    """
    from onnx2torch.node_converters.registry import get_converter

    try:
        get_converter(op_type, version, domain)
    except NotImplementedError:
        return False
    return True


def unconvertible_nodes(model: onnx.ModelProto, opset: int | None = None) -> list[tuple[onnx.NodeProto, int | None]]:
    """Nodes for which onnx2torch has no converter at this opset, with the op's schema version."""
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    if opset is not None:
        opsets[""] = opset
    missing = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = opsets.get(domain)
        if not has_converter(node.op_type, domain, version or 1):
            missing.append((node, _since_version(node.op_type, domain, version)))
    return missing


def _since_version(op_type: str, domain: str, version: int | None) -> int | None:
    """The opset at which the op's schema in force at `version` was introduced."""
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=version or 1, domain=domain).since_version
    except onnx.defs.SchemaError:
        return version or None
