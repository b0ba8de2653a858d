"""The metrics of METHOD §5: small pure functions over σ maps, entropy maps and masks (numpy)."""

from __future__ import annotations

import math

import numpy as np

#: Entropy of a unit-variance Gaussian, nats: H = log σ + ½ log(2πe).
HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


def entropy_map(log_sigma: np.ndarray) -> np.ndarray:
    """Pixel-wise information discarding H_uv (nats per input value). High = discarded."""
    return log_sigma + HALF_LOG_2PIE


def sensitivity_map(log_sigma: np.ndarray) -> np.ndarray:
    """s_uv = 1/σ_uv², scaled to a maximum of 1: how much the feature depends on each pixel.

    Ranks pixels like −H, but on a linear scale, so thresholds and boxes mean something.
    """
    inverse_variance = np.exp(-2.0 * (log_sigma - log_sigma.min()))
    return inverse_variance / inverse_variance.max()


def cid(entropy: np.ndarray) -> float:
    """CID: mean of H_uv over positions (nats per input value), comparable across input sizes."""
    return float(entropy.mean())


def cid_total(entropy: np.ndarray, channels: int) -> float:
    """Total entropy of the perturbation cloud, C·Σ H_uv (nats)."""
    return float(channels * entropy.sum())


def input_cid(image: np.ndarray, tau: float) -> float:
    """CID of the identity layer: its optimum is uniform, σ = sqrt(τ)·std(x)."""
    std = float(image.std())
    if std == 0:
        return float("-inf")
    return math.log(math.sqrt(tau) * std) + HALF_LOG_2PIE


def concentration(entropy: np.ndarray, foreground: np.ndarray) -> float:
    """mean_bg H − mean_fg H: positive when the layer keeps the foreground and discards the rest."""
    foreground = foreground.astype(bool)
    if foreground.all() or not foreground.any():
        return float("nan")
    return float(entropy[~foreground].mean() - entropy[foreground].mean())


def saturated_fraction(log_sigma: np.ndarray, sigma_max: float, rtol: float = 1e-3) -> float:
    """Share of positions at σ_max: information there is fully discarded."""
    return float((log_sigma >= math.log(sigma_max) - rtol).mean())
