"""Load an ONNX file safely: parse, resolve external data inside the model's folder, validate."""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import InputError
from .files import regular_file


@dataclass(frozen=True)
class LoadedModel:
    """A parsed, validated ONNX model and where it came from."""

    path: Path
    sha256: str
    proto: onnx.ModelProto

    @property
    def opset(self) -> int:
        return default_opset(self.proto)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def load_model(path: str | Path) -> LoadedModel:
    """Read `path`, check it is a complete ONNX model whose external data stays in its folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the path of an .onnx model inside it")
    data = regular_file(path, "model").read_bytes()  # a FIFO would block, /dev/zero never end
    if not data:
        raise InputError(f"{path}: the file is empty; re-export the model")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not an ONNX protobuf (truncated or another format?): {_first_line(err)}") from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise InputError(f"{path}: not an ONNX model (no IR version or no graph nodes); re-export it to ONNX")
    _check_opset(path, proto)
    _sort_nodes(path, proto.graph)
    _load_external_data(path, proto)
    _check(path, proto)
    return LoadedModel(path=path.resolve(), sha256=hashlib.sha256(data).hexdigest(), proto=proto)


def _check(path: Path, proto: onnx.ModelProto) -> None:
    """onnx.checker on the model; from the file when it is over protobuf's 2 GB in memory."""
    try:
        try:
            onnx.checker.check_model(proto)
        except ValueError:  # too large to serialise: the file keeps its weights external
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise InputError(f"{path}: the ONNX checker rejects the model: {_first_line(err)}") from None


def _check_opset(path: Path, proto: onnx.ModelProto) -> None:
    supported = onnx.defs.onnx_opset_version()
    opset = default_opset(proto)
    if opset > supported:
        raise InputError(
            f"{path}: opset {opset} is newer than this onnx ({onnx.__version__}, opset {supported}); "
            f"upgrade onnx or export with opset <= {supported}"
        )


def _sort_nodes(path: Path, graph: onnx.GraphProto) -> None:
    """Put nodes in topological order (some tools write them out of order, which the checker
    refuses although nothing is wrong); a cycle is an error that names nodes on it."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    needs = [{producer[name] for name in node_inputs(node) if name in producer} for node in graph.node]
    if any(j >= i for i, deps in enumerate(needs) for j in deps):
        order = _topological_order(needs)
        if order is None:
            stuck = [graph.node[i] for i in range(len(needs)) if _on_cycle(i, needs)]
            names = ", ".join(repr(node.name or node.output[0]) for node in stuck[:4])
            raise InputError(f"{path}: the graph has a cycle through nodes {names}; an ONNX graph must be acyclic")
        nodes = [graph.node[i] for i in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of a node, including outer-scope names that its subgraphs (If, Loop) read."""
    names = list(node.input)
    for attr in node.attribute:
        for subgraph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in subgraph.node:
                names.extend(node_inputs(inner))
    return names


def _topological_order(needs: list[set[int]]) -> list[int] | None:
    """Kahn's algorithm, stable (keeps the file's order where it can); None when there is a cycle."""
    remaining = [set(deps) for deps in needs]
    users: list[list[int]] = [[] for _ in needs]
    for i, deps in enumerate(needs):
        for j in deps:
            users[j].append(i)
    ready = [i for i, deps in enumerate(remaining) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            remaining[user].discard(i)
            if not remaining[user]:
                heapq.heappush(ready, user)
    return order if len(order) == len(needs) else None


def _on_cycle(start: int, needs: list[set[int]]) -> bool:
    """Whether node `start` can reach itself through its inputs."""
    seen, stack = set(), list(needs[start])
    while stack:
        i = stack.pop()
        if i == start:
            return True
        if i not in seen:
            seen.add(i)
            stack.extend(needs[i])
    return False


def _load_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """Resolve external tensors relative to the model's folder, refusing any that escape it."""
    base = path.resolve().parent
    for tensor in _all_tensors(proto.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except (ValueError, TypeError) as err:  # offset or length not a whole number >= 0
            raise InputError(
                f"{path}: tensor '{tensor.name}' has a malformed external-data entry ({_first_line(err)}); "
                "re-export the model"
            ) from None
        location = Path(info.location)
        target = (base / location).resolve()
        if location.is_absolute() or not target.is_relative_to(base):
            raise InputError(
                f"{path}: tensor '{tensor.name}' points to external data '{info.location}' outside the "
                f"model's folder; keep external data files beside the model"
            )
        if target.exists():
            regular_file(target, "external data")  # a FIFO or device would block the read
        if not target.is_file():
            raise InputError(
                f"{path}: external data file '{info.location}' for tensor '{tensor.name}' is missing; "
                f"copy it next to the model"
            )
    try:
        external_data_helper.load_external_data_for_model(proto, str(base))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read external data: {_first_line(err)}") from None


def _all_tensors(graph: onnx.GraphProto):
    """Every tensor the graph stores (weights and attribute tensors, subgraphs included): the
    ones that may keep their bytes in an external file."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for subgraph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_tensors(subgraph)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
