"""Compare the converted module's features with onnxruntime on the same graph and input."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from .errors import ConversionError

DEFAULT_RTOL = 1e-4
#: Features this small in absolute terms agree whatever their relative error (dead ReLUs).
ATOL = 1e-6


@dataclass(frozen=True)
class LayerAgreement:
    """How closely torch and onnxruntime agree on one layer's feature."""

    layer: str
    max_abs_error: float
    rel_l2_error: float
    passed: bool


@dataclass(frozen=True)
class CrossCheck:
    """The cross-check of every chosen layer, and the onnxruntime provider that ran it."""

    provider: str
    note: str
    tolerance: float
    layers: tuple[LayerAgreement, ...]

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    def raise_on_failure(self) -> None:
        for layer in self.layers:
            if not layer.passed:
                raise ConversionError(
                    f"cross-check failed at layer '{layer.layer}': relative L2 error {layer.rel_l2_error:.2e} "
                    f"(max abs {layer.max_abs_error:.2e}) against onnxruntime exceeds {self.tolerance:.0e}; "
                    "the conversion is wrong for this graph (please report it)"
                )


def ort_session(model: onnx.ModelProto, prefer_cuda: bool):
    """An onnxruntime session on CUDA when asked and possible, else CPU; with a note saying which."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Exact fp32 numerics: no fused kernels that reorder arithmetic beyond the reference's.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers = ["CPUExecutionProvider"]
    wants_cuda = prefer_cuda and "CUDAExecutionProvider" in ort.get_available_providers()
    if wants_cuda:
        providers.insert(0, "CUDAExecutionProvider")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    used = session.get_providers()[0]
    if used == "CUDAExecutionProvider":
        note = "onnxruntime ran on CUDA"
    elif wants_cuda:
        note = "onnxruntime's CUDA provider is installed but could not start (no GPU or CUDA libraries); ran on CPU"
    elif prefer_cuda:
        note = "onnxruntime has no CUDA provider here (install onnxruntime-gpu); ran on CPU"
    else:
        note = "onnxruntime ran on CPU"
    return session, used, note


def cross_check(
    truncated: onnx.ModelProto,
    input_name: str,
    features: Mapping[str, torch.Tensor],
    model_input: np.ndarray,
    tolerance: float = DEFAULT_RTOL,
    prefer_cuda: bool = False,
) -> CrossCheck:
    """Run `truncated` (chosen layers as outputs) in onnxruntime on `model_input`; compare to `features`."""
    try:
        session, provider, note = ort_session(truncated, prefer_cuda)
        names = [output.name for output in session.get_outputs()]
        expected = dict(zip(names, session.run(names, {input_name: model_input.astype(np.float32)})))
    except Exception as err:
        raise ConversionError(f"onnxruntime cannot run the normalised graph: {str(err).strip().splitlines()[0]}") from None
    agreements = []
    for name, feature in features.items():
        got = feature.detach().float().cpu().numpy()
        want = np.asarray(expected[name], dtype=np.float64)
        if got.shape != want.shape:
            agreements.append(LayerAgreement(name, float("inf"), float("inf"), False))
            continue
        diff = got.astype(np.float64) - want
        max_abs = float(np.abs(diff).max()) if diff.size else 0.0
        norm = float(np.linalg.norm(want))
        rel = float(np.linalg.norm(diff) / norm) if norm > 0 else (0.0 if max_abs == 0 else float("inf"))
        finite = bool(np.isfinite(got).all() and np.isfinite(want).all())
        agreements.append(LayerAgreement(name, max_abs, rel, finite and (rel <= tolerance or max_abs <= ATOL)))
    return CrossCheck(provider, note, tolerance, tuple(agreements))
