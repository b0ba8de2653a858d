"""Reconstruction uncertainty: the invertible-linear oracle, decoders, the cache, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from onnx_infodiscard import metrics
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.perturb import RECONSTRUCTION_FLOOR, Distortion, SolverSettings, solve
from onnx_infodiscard.ru import DecoderConfig, trained_decoder

TAU = 0.1


class Inverse(nn.Module):
    def __init__(self, inverse: torch.Tensor, shape) -> None:
        super().__init__()
        self.inverse, self.shape = inverse, shape

    def forward(self, feature):
        return (feature @ self.inverse.T).reshape(-1, *self.shape)


def test_with_the_exact_inverse_as_decoder_ru_equals_cid():
    """g(h(x')) − x = σ⊙ε, so maximising the reconstruction entropy is maximising mean log σ."""
    torch.manual_seed(0)
    shape = (1, 6, 6)
    n = math.prod(shape)
    weight = torch.randn(n, n) / math.sqrt(n) + torch.diag(torch.linspace(0.3, 3.0, n))
    image = torch.rand(*shape)
    feature = {"f": lambda x: x.flatten(1) @ weight.T}
    distortion = Distortion(feature, image[None], [0], ["f"])
    settings = SolverSettings(tau=TAU, sigma_max=100.0)
    cid = solve(distortion, settings)
    ru = solve(
        distortion, settings, decoders={"f": Inverse(torch.linalg.inv(weight), shape)}, reconstruction_samples=2048
    )
    errors = ru.reconstruction_error
    sigma_cid, sigma_ru = np.exp(cid.log_sigma[0]), np.exp(ru.log_sigma[0])
    assert np.median(np.abs(sigma_ru / sigma_cid - 1)) <= 0.05
    ru_mean = float(np.mean(0.5 * np.log(2 * np.pi * np.e * (errors[0] + RECONSTRUCTION_FLOOR))))
    assert ru_mean == pytest.approx(metrics.cid(metrics.entropy_map(cid.log_sigma[0])), abs=0.01)
    assert ru.converged[0]


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    images = []
    for _ in range(count):
        cy, cx = rng.uniform(4, 12, 2)
        images.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(4, 12))[None].astype(np.float32))
    return np.stack(images)


def _conv_feature():
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
    return lambda x: torch.relu(conv(x)).detach()


def test_decoder_reconstructs_held_out_images_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODISCARD_CACHE", str(tmp_path))
    config = DecoderConfig(epochs=40)
    feature = _conv_feature()
    first = trained_decoder(feature, "conv", _images(40), "sha", config)
    assert not first.from_cache and first.cache_file.suffix == ".safetensors"
    assert first.held_out_psnr > 20  # a blob is easy to reconstruct from an 8-channel feature
    again = trained_decoder(feature, "conv", _images(40), "sha", config)
    assert again.from_cache and again.held_out_mse == pytest.approx(first.held_out_mse)
    x = torch.from_numpy(_images(3, seed=5))
    assert torch.allclose(again.module(feature(x)), first.module(feature(x)))
    retrained = trained_decoder(feature, "conv", _images(40), "sha", config, retrain=True)
    assert not retrained.from_cache


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODISCARD_CACHE", str(tmp_path))
    config = DecoderConfig(epochs=2)
    decoder = trained_decoder(_conv_feature(), "conv", _images(20), "sha", config)
    decoder.cache_file.write_bytes(b"not a safetensors file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = trained_decoder(_conv_feature(), "conv", _images(20), "sha", config)
    assert not rebuilt.from_cache
    assert any("unreadable" in str(w.message) for w in caught)
    assert trained_decoder(_conv_feature(), "conv", _images(20), "sha", config).from_cache


def test_too_few_training_images_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODISCARD_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="too few for a held-out split"):
        trained_decoder(_conv_feature(), "conv", _images(4), "sha")


# --- through the CLI ------------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from onnx_infodiscard.embedded import DEFAULT_MODEL  # noqa: E402

ONE_DIGIT = str(sorted((DEFAULT_MODEL.parent / "images").glob("*.png"))[0])


def _ru_cli(*args, cache):
    env = {**__import__("os").environ, "INFODISCARD_CACHE": str(cache)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_infodiscard_cli.main",
            "ru",
            str(DEFAULT_MODEL),
            ONE_DIGIT,
            "-l",
            "/relu1/Relu_output_0",
            "--steps",
            "20",
            "--samples",
            "8",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def test_ru_command_reports_ru_and_decoder_psnr(tmp_path):
    result = _ru_cli("--out", str(tmp_path / "r"), "--json", cache=tmp_path / "cache")
    assert result.returncode in (0, 4), result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    ru = report["results"][0]["ru"]
    assert set(ru) >= {"mean", "converged", "d_over_tau", "decoder_psnr"}
    assert ru["decoder_psnr"] > 15
    assert "ru" in (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("content", ["empty", "not images"])
def test_a_training_folder_without_images_is_a_one_line_error(tmp_path, content):
    folder = tmp_path / "train"
    folder.mkdir()
    if content == "not images":
        for i in range(12):
            (folder / f"x{i}.png").write_text("not an image")
    result = _ru_cli("--train-images", str(folder), "--out", str(tmp_path / "r"), cache=tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()
