"""Compare the converted module's features with onnxruntime on the same graph and input.

The tolerance of each layer is calibrated on the graph itself: float32 rounding alone moves a deep
network's features by more than a fixed 1e-4 (onnxruntime disagrees with itself between its own
optimisation levels, and a change of the input by two ulps moves a deep activation by ~1e-4), so each
layer's tolerance is `SAFETY` times the larger of those two observed disagreements, floored at the
tolerance asked for (default 1e-4) and capped at `MAX_RTOL`, so that a real conversion error (a
wrong weight, a wrong op) still fails.

A quantised graph is analysed through its float equivalent; that one is checked as above, and
also against onnxruntime on the ORIGINAL quantised graph (`source`): integer tensors are compared
through their dequantised value `scale·(q − zero_point)`, at a tolerance that says what quantisation
costs: `QUANT_SAFETY` × the change that rounding every quantised tensor to its grid (simulated as
uniform noise of ±scale/2 in the float graph) produces at that layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from .errors import ConversionError

#: The floor of every layer's relative tolerance (the tolerance before calibration).
DEFAULT_RTOL = 1e-4
#: Calibrated tolerances are never laxer than this: a 1 % relative error is a conversion error.
MAX_RTOL = 1e-2
#: Tolerance = SAFETY × the float32 disagreement the graph shows against itself.
SAFETY = 10.0
#: A reference whose largest magnitude is below this is "near zero" (a dead ReLU, a saturated
#: Sigmoid): its relative error measures rounding only, so the absolute criterion applies instead.
SCALE_FLOOR = 1e-3
#: The absolute tolerance (before calibration) of a near-zero reference.
ATOL = 1e-6
#: Against the quantised original: tolerance = QUANT_SAFETY × the simulated rounding change, at most
#: MAX_QUANT_RTOL (a float equivalent 30 % off its quantised graph is not its equivalent).
QUANT_SAFETY = 3.0
MAX_QUANT_RTOL = 0.3
#: Criteria a layer can be judged by.
CRITERIA = ("relative_l2", "absolute", "shape", "non_finite")


@dataclass(frozen=True)
class LayerAgreement:
    """How closely torch and onnxruntime agree on one layer's feature (errors are unitless / feature units).

    `criterion`: "relative_l2" (relative L2 error ≤ `tolerance`), "absolute" (the reference is near
    zero, max |ref| < SCALE_FLOOR, so max abs error ≤ `abs_tolerance` is asked instead), "shape" or
    "non_finite" (failed outright). `sensitivity`: the relative L2 disagreement of onnxruntime with
    itself (other optimisation level, input moved by two ulps) the tolerance was calibrated on.
    """

    layer: str
    max_abs_error: float
    rel_l2_error: float
    passed: bool
    node_name: str = ""
    tolerance: float = DEFAULT_RTOL
    abs_tolerance: float = ATOL
    criterion: str = "relative_l2"
    sensitivity: float = 0.0
    reference_scale: float = float("nan")  # max |onnxruntime feature|

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "node_name": self.node_name,
            "tolerance": self.tolerance,
            "abs_tolerance": self.abs_tolerance,
            "rel_l2": self.rel_l2_error,
            "max_abs": self.max_abs_error,
            "sensitivity": self.sensitivity,
            "reference_scale": self.reference_scale,
            "criterion": self.criterion,
            "passed": self.passed,
        }

    def describe(self) -> str:
        """One line: what was measured against what, and by which criterion."""
        if self.criterion == "shape":
            return "shapes differ"
        if self.criterion == "non_finite":
            return "non-finite values"
        if self.criterion == "absolute":
            return (
                f"max abs error {self.max_abs_error:.2e} vs {self.abs_tolerance:.1e} (absolute: the reference is "
                f"near zero, max {self.reference_scale:.1e}; relative L2 {self.rel_l2_error:.2e} not used)"
            )
        return f"relative L2 error {self.rel_l2_error:.2e} vs {self.tolerance:.1e} (max abs {self.max_abs_error:.2e})"


@dataclass(frozen=True)
class CrossCheck:
    """The cross-check of every chosen layer, and the onnxruntime provider that ran it.

    `tolerance` is the floor of the per-layer tolerances (each layer says its own).
    """

    provider: str
    note: str
    tolerance: float
    layers: tuple[LayerAgreement, ...]
    calibrated: bool = False
    #: Quantised graphs: the float features against onnxruntime on the original quantised graph
    #: (`sensitivity` there is the simulated rounding change); `quantised_note` says how, or why not.
    quantised: tuple[LayerAgreement, ...] = ()
    quantised_note: str = ""

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in (*self.layers, *self.quantised))

    def to_json(self) -> dict:
        return {
            "provider": self.provider,
            "note": self.note,
            "tolerance": self.tolerance,
            "max_tolerance": MAX_RTOL,
            "safety": SAFETY,
            "scale_floor": SCALE_FLOOR,
            "calibrated": self.calibrated,
            "passed": self.passed,
            "layers": [layer.to_json() for layer in self.layers],
            "quantised": {
                "note": self.quantised_note,
                "safety": QUANT_SAFETY,
                "max_tolerance": MAX_QUANT_RTOL,
                "layers": [layer.to_json() for layer in self.quantised],
            },
        }

    def raise_on_failure(self) -> None:
        for layer in self.layers:
            if not layer.passed:
                node = f" (node '{layer.node_name}')" if layer.node_name else ""
                raise ConversionError(
                    f"cross-check failed at layer '{layer.layer}'{node} against onnxruntime: {layer.describe()}; "
                    "the conversion is wrong for this graph (please report it)"
                )
        for layer in self.quantised:
            if not layer.passed:
                raise ConversionError(
                    f"the float equivalent of the quantised graph differs from it at layer '{layer.layer}' beyond "
                    f"what rounding explains: {layer.describe()}; the dequantisation is wrong here (please report it)"
                )


def ort_session(model: onnx.ModelProto, prefer_cuda: bool, level: str = "basic"):
    """An onnxruntime session on CUDA when asked and possible, else CPU; with a note saying which.

    `level`: onnxruntime's graph optimisation, "basic" (the reference: no fused kernels that reorder
    arithmetic), "all" or "none" (the calibration's other readings).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
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


def run_outputs(session, input_name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [output.name for output in session.get_outputs()]
    return {
        name: np.asarray(value, dtype=np.float64)
        for name, value in zip(names, session.run(names, {input_name: x.astype(np.float32)}))
    }


def ulp_perturbed(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """`x·(1 + u·2⁻²²)`, u uniform in [−1, 1]: a change of up to two float32 ulps, off the float grid
    (an exact one-ulp step would shift products by whole ulps and hide their rounding)."""
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, x.shape)
    return (x.astype(np.float64) * (1.0 + u * 2.0**-22)).astype(np.float32)


def feature_errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative L2 error) of `got` against `want`, in float64."""
    diff = got.astype(np.float64) - want
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(want))
    rel = float(np.linalg.norm(diff) / norm) if norm > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, rel


def sensitivity(
    truncated: onnx.ModelProto, input_name: str, model_input: np.ndarray, reference: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Per output: (relative L2, max abs) disagreement of onnxruntime with its own `reference` when
    the optimisation level changes (all, none) or the input moves by two ulps: what float32 rounding costs."""
    readings = []
    for level in ("all", "none"):
        session, _, _ = ort_session(truncated, prefer_cuda=False, level=level)
        readings.append(run_outputs(session, input_name, model_input))
    session, _, _ = ort_session(truncated, prefer_cuda=False, level="basic")
    readings.append(run_outputs(session, input_name, ulp_perturbed(model_input)))
    out = {}
    for name, want in reference.items():
        errors = [feature_errors(reading[name], want) for reading in readings if reading[name].shape == want.shape]
        finite = [(rel, abs_) for abs_, rel in errors if np.isfinite(rel) and np.isfinite(abs_)]
        out[name] = (max((r for r, _ in finite), default=0.0), max((a for _, a in finite), default=0.0))
    return out


def judge(
    name: str,
    got: np.ndarray,
    want: np.ndarray,
    floor: float,
    observed: tuple[float, float],
    node_name: str = "",
    safety: float = SAFETY,
    cap: float = MAX_RTOL,
    abs_floor: float = ATOL,
) -> LayerAgreement:
    """Compare one feature: relative L2 against the calibrated tolerance (`safety` × observed, at
    most `cap`), or absolute when the reference is near zero."""
    rel_sens, abs_sens = observed
    tolerance = min(max(floor, safety * rel_sens), max(floor, cap))
    abs_tolerance = max(abs_floor, min(max(ATOL, safety * abs_sens), SCALE_FLOOR * cap))
    common = dict(node_name=node_name, tolerance=tolerance, abs_tolerance=abs_tolerance, sensitivity=rel_sens)
    if got.shape != want.shape:
        return LayerAgreement(name, float("inf"), float("inf"), False, criterion="shape", **common)
    max_abs, rel = feature_errors(got, want)
    scale = float(np.abs(want).max()) if want.size else 0.0
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return LayerAgreement(name, max_abs, rel, False, criterion="non_finite", reference_scale=scale, **common)
    if scale < SCALE_FLOOR:
        return LayerAgreement(
            name, max_abs, rel, max_abs <= abs_tolerance, criterion="absolute", reference_scale=scale, **common
        )
    return LayerAgreement(
        name, max_abs, rel, rel <= tolerance, criterion="relative_l2", reference_scale=scale, **common
    )


def cross_check(
    truncated: onnx.ModelProto,
    input_name: str,
    features: Mapping[str, torch.Tensor],
    model_input: np.ndarray,
    tolerance: float = DEFAULT_RTOL,
    prefer_cuda: bool = False,
    calibrate: bool = True,
    source: onnx.ModelProto | None = None,
) -> CrossCheck:
    """Run `truncated` (chosen layers as outputs) in onnxruntime on `model_input`; compare to `features`.

    `tolerance` is the floor of each layer's relative tolerance; with `calibrate`, each layer's is
    raised to SAFETY × the graph's own float32 disagreement there (see `sensitivity`), at most MAX_RTOL.
    `source`: the quantised graph `truncated` is the float equivalent of; compared as well (see
    `quantised_check`).
    """
    try:
        session, provider, note = ort_session(truncated, prefer_cuda)
        expected = run_outputs(session, input_name, model_input)
        observed = sensitivity(truncated, input_name, model_input, expected) if calibrate else {}
    except Exception as err:
        first = str(err).strip().splitlines()[0]
        raise ConversionError(f"onnxruntime cannot run the normalised graph: {first}") from None
    producers = {out: node.name for node in truncated.graph.node for out in node.output}
    agreements = tuple(
        judge(
            name,
            feature.detach().float().cpu().numpy(),
            expected[name],
            tolerance,
            observed.get(name, (0.0, 0.0)),
            producers.get(name, ""),
        )
        for name, feature in features.items()
    )
    if source is None:
        return CrossCheck(provider, note, tolerance, agreements, calibrated=calibrate)
    from .quantcheck import quantised_check

    floors = {agreement.layer: agreement for agreement in agreements}
    quantised, quantised_note = quantised_check(source, truncated, input_name, features, model_input, floors)
    return CrossCheck(provider, note, tolerance, agreements, calibrate, quantised, quantised_note)
