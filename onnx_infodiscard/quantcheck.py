"""The float equivalent of a quantised graph against onnxruntime on the quantised original.

The float graph drops rounding (the analysis needs gradients), so it differs from the quantised
one by what rounding costs. That cost is measured on the graph itself: each tensor where the
quantised graph rounds gets uniform noise of ±scale/2 (one rounding, simulated) in a copy of the
float graph; the change this makes at a layer, times `QUANT_SAFETY`, is that layer's tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .crosscheck import (
    MAX_QUANT_RTOL,
    QUANT_SAFETY,
    LayerAgreement,
    feature_errors,
    judge,
    ort_session,
    run_outputs,
)
from .passes.qoperator import activation_quantisation


def rounding_steps(graph: onnx.GraphProto, constants: Mapping) -> dict[str, tuple[float, str | None]]:
    """`{tensor: (scale, alias)}` where the quantised graph rounds: QuantizeLinear and QLinear outputs,
    and DequantizeLinear outputs of activations (one rounding with their input, the `alias`: in the
    float graph only one of the two names is left, a Q→DQ pair's DQ output or a renamed graph output)."""
    params, rounded = activation_quantisation(graph, dict(constants))
    steps: dict[str, tuple[float, str | None]] = {
        name: (float(np.asarray(params[name][0]).ravel()[0]), None) for name in rounded
    }
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in params and node.input[1] in constants:
            steps[node.output[0]] = (float(np.asarray(constants[node.input[1]]).ravel()[0]), node.input[0])
    return steps


def with_rounding_noise(model: onnx.ModelProto, steps: Mapping[str, tuple[float, str | None]]) -> onnx.ModelProto:
    """A copy of the float graph where every rounding tensor gets uniform noise of ±scale/2 (fixed seeds)."""
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    present = {name for node in model.graph.node for name in node.output}
    nodes = []
    for node in noisy.graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            step = steps.get(name)
            if step is None or (step[1] is not None and step[1] in present):
                continue
            exact, noise = f"{name}__exact", f"{name}__rounding"
            node.output[i] = exact
            half = step[0] / 2
            seed = float(len(nodes))
            nodes.append(helper.make_node("RandomUniformLike", [exact], [noise], low=-half, high=half, seed=seed))
            nodes.append(helper.make_node("Add", [exact, noise], [name]))
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del noisy.graph.node[:]
    noisy.graph.node.extend(copies)
    return noisy


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    return copy


def quantised_check(
    source: onnx.ModelProto,
    truncated: onnx.ModelProto,
    input_name: str,
    features: Mapping[str, torch.Tensor],
    model_input: np.ndarray,
    floors: Mapping[str, LayerAgreement],
) -> tuple[tuple[LayerAgreement, ...], str]:
    """Each chosen layer that is a tensor of `source`, against onnxruntime there (integer tensors
    dequantised); tolerance = QUANT_SAFETY × the simulated rounding change, floored at the float check's.
    A near-zero reference is judged by max abs error ≤ QUANT_SAFETY × the simulated max abs change
    (a quantised tensor near zero is a step or two of its scale)."""
    if any(node.op_type == "DynamicQuantizeLinear" for node in source.graph.node):
        return (), "dynamic quantisation: scales are computed at run time; only the float equivalent is checked"
    constants = {init.name: numpy_helper.to_array(init) for init in source.graph.initializer}
    params, _ = activation_quantisation(source.graph, constants)
    produced = {name for node in source.graph.node for name in node.output}
    names = [name for name in features if name in produced]
    missing = [name for name in features if name not in produced]
    if not names:
        return (), "none of the chosen layers is a tensor of the quantised graph; only the float equivalent is checked"
    try:
        session, _, _ = ort_session(_with_outputs(source, names), prefer_cuda=False)
        reference = run_outputs(session, input_name, model_input)
        clean = run_outputs(ort_session(truncated, prefer_cuda=False)[0], input_name, model_input)
        noisy_model = with_rounding_noise(truncated, rounding_steps(source.graph, constants))
        noisy = run_outputs(ort_session(noisy_model, prefer_cuda=False)[0], input_name, model_input)
    except Exception as err:  # onnxruntime's errors have no common type
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (), f"onnxruntime could not run the quantised original ({first}); only the float equivalent is checked"
    agreements = []
    for name in names:
        want = reference[name]
        if name in params:
            scale, zero = params[name]
            want = float(np.asarray(scale).ravel()[0]) * (want - float(np.asarray(zero).ravel()[0]))
        max_abs, rel = feature_errors(noisy[name], clean[name])
        floor = floors[name]
        got = features[name].detach().float().cpu().numpy()
        agreements.append(
            judge(
                name,
                got,
                want,
                floor.tolerance,
                (rel, max_abs),
                floor.node_name,
                safety=QUANT_SAFETY,
                cap=MAX_QUANT_RTOL,
                abs_floor=max(floor.abs_tolerance, QUANT_SAFETY * max_abs),
            )  # fmt: skip
        )
    note = (
        "against onnxruntime on the original quantised graph (integer tensors dequantised, scale·(q − zero point)); "
        f"tolerance {QUANT_SAFETY:g} × the change simulated rounding (±scale/2 at every quantised tensor) makes"
    )
    if missing:
        note += "; not tensors of the quantised graph (made by the pass), not compared: " + ", ".join(missing)
    return tuple(agreements), note
