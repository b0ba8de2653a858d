"""What an analysis found, as typed results with their units: per (image, layer), per image, per run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .crosscheck import CrossCheck
from .layers import Layer
from .output.encode import SCHEMA_VERSION
from .perturb import SolverSettings
from .preprocess import Preprocessing

#: Maps whose split-half reliability is below this are flagged: their pixel structure is partly noise.
RELIABILITY_FLAG = 0.8


@dataclass(frozen=True)
class RUResult:
    """Reconstruction uncertainty of one (image, layer) under the same budget τ as CID."""

    mean: float  # nats per input value: mean over c, u, v of ½ log(2πe·E[(g(h(x')) − x)²])
    per_channel: tuple[float, ...]
    map: np.ndarray = field(repr=False)  # (H, W), averaged over channels
    converged: bool = False
    d_over_tau: float = float("nan")
    decoder_mse: float = float("nan")  # held out, canonical units²
    decoder_psnr: float = float("nan")  # dB

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "per_channel": list(self.per_channel),
            "converged": self.converged,
            "d_over_tau": self.d_over_tau,
            "decoder_mse": self.decoder_mse,
            "decoder_psnr": self.decoder_psnr,
        }


@dataclass(frozen=True)
class LayerResult:
    """One (image, layer): its σ solution and metrics. Maps are (H, W) at the model's resolution."""

    image: str
    layer: str
    layer_index: int
    depth: float
    log_sigma: np.ndarray = field(repr=False)  # log of canonical units
    entropy: np.ndarray = field(repr=False)  # H_uv, nats per input value
    sensitivity: np.ndarray = field(repr=False)  # 1/σ², max 1
    cid: float  # nats per input value
    cid_total: float  # nats
    delta_cid: float  # CID − CID of the input (identity layer), nats per value
    concentration: float | None  # mean_bg H − mean_fg H, nats; None without a foreground
    saturated_fraction: float
    converged: bool
    d_over_tau: float
    d_over_tau_se: float
    eval_samples: int
    multiplier: float
    steps: int
    seconds: float
    ru: RUResult | None = None
    extra_steps: int = 0  # beyond `steps`, given automatically to meet the budget
    reliability: float = float("nan")  # split-half correlation of the map, Spearman–Brown corrected; 1 = no MC noise

    def to_json(self) -> dict:
        arrays = ("log_sigma", "entropy", "sensitivity", "ru")
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in arrays}
        data["ru"] = self.ru.to_json() if self.ru else None
        return data


@dataclass(frozen=True)
class ImageSummary:
    name: str
    cid_input: float  # nats per value: the identity layer's optimum, sqrt(τ)·std(x)
    has_foreground: bool


@dataclass(frozen=True)
class Report:
    """Everything one analysis found, with what produced it."""

    tool_version: str
    model_path: str
    model_sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    preprocessing: Preprocessing
    settings: SolverSettings
    foreground: str | None
    device: str
    layers: tuple[Layer, ...]
    crosscheck: CrossCheck
    batch_safe: bool
    passes: tuple[str, ...]
    images: tuple[ImageSummary, ...]
    results: tuple[LayerResult, ...]
    canonical_images: tuple[np.ndarray, ...] = field(repr=False)  # (C, H, W) each, for overlays
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    audit: tuple = ()  # audit.RuleOutcome of each --fail-if rule
    cached_rows: int = 0  # rows taken from the row cache instead of being solved
    peak_memory: int | None = None  # bytes: peak RSS of the process (CPU) or peak allocated (CUDA)

    @property
    def converged(self) -> bool:
        return all(r.converged for r in self.results)

    def layer_means(self) -> list[dict]:
        """Per layer, the metrics averaged over images (converged results only)."""
        rows = []
        for layer in self.layers:
            results = [r for r in self.results if r.layer == layer.name and r.converged]
            ru = [r.ru for r in self.results if r.layer == layer.name and r.ru is not None]
            rows.append(
                {
                    "layer": layer.name,
                    "index": layer.index,
                    "op_type": layer.op_type,
                    "depth": layer.depth,
                    "n_images": len(results),
                    **{
                        key: _mean_or_none([getattr(r, key) for r in results])
                        for key in ("cid", "delta_cid", "concentration", "d_over_tau", "reliability")
                    },
                    "ru": _mean_or_none([r.mean for r in ru if r.converged]) if ru else None,
                    "decoder_psnr": _mean_or_none([r.decoder_psnr for r in ru]) if ru else None,
                }
            )
        return rows

    def to_json(self) -> dict:
        from . import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "model": {
                "path": self.model_path,
                "sha256": self.model_sha256,
                "input": self.input_name,
                "input_shape": list(self.input_shape),
            },
            "preprocessing": self.preprocessing.to_json(),
            "parameters": {**asdict(self.settings), "foreground": self.foreground, "device": self.device},
            "layers": [asdict(layer) for layer in self.layers],
            "crosscheck": {
                "provider": self.crosscheck.provider,
                "note": self.crosscheck.note,
                "tolerance": self.crosscheck.tolerance,
                "passed": self.crosscheck.passed,
                "layers": [asdict(a) for a in self.crosscheck.layers],
                "quantised": self.crosscheck.to_json()["quantised"],  # against the quantised original, if any
            },
            "batch_safe": self.batch_safe,
            "normalisation": list(self.passes),
            "images": [asdict(image) for image in self.images],
            "results": [r.to_json() for r in self.results],
            "summary": {"converged": self.converged, "layers": self.layer_means()},
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "audit": self.audit_json(),
            "cached_rows": self.cached_rows,
            "peak_memory": self.peak_memory,
        }

    def audit_json(self) -> dict | None:
        if not self.audit:
            return None
        return {"failed": any(o.failed for o in self.audit), "outcomes": [o.to_json() for o in self.audit]}


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None
