"""Truncate the graph at the chosen layers and convert it to a differentiable torch module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import torch
from onnx import helper
from torch import fx, nn

from .errors import ConversionError
from .layers import Layer
from .passes import NormalisedModel, unconvertible_nodes

#: Per-sample features of a batch may differ from single runs by float reordering only.
BATCH_SAFETY_RTOL = 1e-4


class FeatureExtractor(nn.Module):
    """`x (B, *input_shape) -> {layer name: feature (B, ...)}`, in eval mode, weights frozen.

    Graphs that mix samples within a batch (a batch dim folded into a constant) run one sample
    at a time (`batch_safe=False`), so a result is never silently wrong.
    """

    def __init__(self, graph_module: nn.Module, names: Sequence[str], batch_safe: bool = True) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.names = list(names)
        self.batch_safe = batch_safe
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.batch_safe or x.shape[0] == 1:
            return self._run(x)
        parts = [self._run(sample[None]) for sample in x]
        return {name: torch.cat([p[name] for p in parts]) for name in self.names}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.graph_module(x)
        if len(self.names) == 1:
            out = (out,)
        return dict(zip(self.names, out))

    def train(self, mode: bool = True) -> FeatureExtractor:
        # BatchNorm must keep its running statistics: this module only ever runs in eval mode.
        return super().train(False)

    def only(self, name: str) -> FeatureExtractor:
        """The same module cut after one layer (weights shared): no compute past that layer."""
        if self.names == [name]:
            return self
        graph, remap, outputs = copied_graph(self.graph_module)
        graph.output(remap[outputs[self.names.index(name)]])
        module = fx.GraphModule(self.graph_module, graph)
        module.graph.eliminate_dead_code()
        module.recompile()
        return FeatureExtractor(module, [name], self.batch_safe)


def copied_graph(module: fx.GraphModule) -> tuple[fx.Graph, dict, tuple]:
    """A copy of the module's graph without its output node, the old→new node map, and the old outputs."""
    source = module.graph
    outputs = next(node for node in source.nodes if node.op == "output").args[0]
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    graph = fx.Graph()
    remap: dict = {}
    graph.graph_copy(source, remap)
    return graph, remap, outputs


@dataclass(frozen=True)
class Conversion:
    """The converted module and what the batch-safety check found."""

    module: FeatureExtractor
    truncated: onnx.ModelProto  # the normalised graph cut at the chosen layers, those as outputs
    batch_safe: bool


def truncate(model: NormalisedModel, layers: Sequence[Layer]) -> onnx.ModelProto:
    """Keep only the nodes the chosen layers need, and expose the layers as graph outputs."""
    graph = model.proto.graph
    wanted = {layer.name for layer in layers}
    needed = set(wanted)
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    keep.reverse()
    shapes = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    outputs = [shapes.get(layer.name) or helper.make_empty_tensor_value_info(layer.name) for layer in layers]
    inputs = [v for v in graph.input if v.name == model.input_name]
    initializers = [init for init in graph.initializer if init.name in needed]
    value_info = [v for v in graph.value_info if v.name in needed and v.name not in wanted]
    new_graph = helper.make_graph(keep, graph.name or "truncated", inputs, outputs, initializers, value_info=value_info)
    truncated = helper.make_model(new_graph, opset_imports=list(model.proto.opset_import))
    truncated.ir_version = model.proto.ir_version
    return truncated


def convert(model: NormalisedModel, layers: Sequence[Layer]) -> Conversion:
    """onnx2torch on the truncated graph, then checks: gradients reach the input; batching is safe."""
    truncated = truncate(model, layers)
    missing = unconvertible_nodes(truncated)
    if missing:
        node, version = missing[0]
        domain = f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        raise ConversionError(
            f"op {node.op_type}{domain} (node '{node.name}', opset {version}) has no onnx2torch converter; "
            f"choose a layer before it or re-export without it{_opset_note(model)}"
        )
    try:
        import onnx2torch

        graph_module = onnx2torch.convert(truncated)
    except Exception as err:  # onnx2torch raises bare NotImplementedError/KeyError/RuntimeError
        raise ConversionError(
            f"onnx2torch could not convert the graph: {type(err).__name__}: {_first_line(err)}"
        ) from None
    names = [layer.name for layer in layers]
    module = FeatureExtractor(graph_module, names)
    probe = _probe_inputs(model)
    first = _check_gradients(module, probe[:1], names)
    batch_safe = _batch_safe(module, probe, first)
    module.batch_safe = batch_safe
    return Conversion(module, truncated, batch_safe)


def _opset_note(model: NormalisedModel) -> str:
    """Why the opset step could not help, when it tried (its pass detail names the ops)."""
    detail = next((p.detail for p in model.passes if p.name == "convert_opset" and " kept:" in p.detail), None)
    return f" ({detail})" if detail else ""


def _probe_inputs(model: NormalisedModel, count: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand((count, *model.input_shape[1:]), generator=generator)


def _check_gradients(module: FeatureExtractor, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every chosen feature of one sample must be connected to the input by autograd (a converter
    that detaches, or returns integers, would leave the optimisation without a gradient).

    Returns the (detached) features, which the batch-safety check reuses.
    """
    x = x.clone().requires_grad_(True)
    try:
        features = module._run(x)
    except Exception as err:
        raise ConversionError(f"the converted module fails to run: {type(err).__name__}: {_first_line(err)}") from None
    for name in names:
        feature = features[name]
        if not feature.is_floating_point() or not feature.requires_grad:
            raise ConversionError(f"layer '{name}': no gradient reaches the input through the converted module")
    return {name: feature.detach() for name, feature in features.items()}


def _batch_safe(module: FeatureExtractor, probe: torch.Tensor, first: dict[str, torch.Tensor]) -> bool:
    """Two different inputs in one batch must give the features of two single runs.

    `first`: the features of `probe[0]` run alone.
    """
    with torch.no_grad():
        singles = [first] + [module._run(sample[None]) for sample in probe[1:]]
        try:
            batched = module._run(probe)
        except Exception:
            return False
    for name in module.names:
        expected = torch.cat([s[name] for s in singles])
        got = batched[name]
        if got.shape != expected.shape:
            return False
        scale = expected.abs().max().clamp_min(1e-12)
        if ((got - expected).abs().max() / scale) > BATCH_SAFETY_RTOL:
            return False
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
