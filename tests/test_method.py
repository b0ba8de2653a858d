"""The oracles of METHOD §6: closed forms the σ optimiser must recover, and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from onnx_infodiscard import metrics
from onnx_infodiscard.analysis import analyze
from onnx_infodiscard.perturb import Distortion, SolverSettings, solve
from onnx_infodiscard.preprocess import Preprocessing

TAU = 0.1
#: The solver oracles (METHOD §6) run on every device; CUDA shows as skipped, with its reason, where there is none.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device here (benchmarks/gpu_check.sh runs these on a GPU)"
        ),
    ),
]


def _solve(feature, image: torch.Tensor, device: str = "cpu", **settings):
    distortion = Distortion({"f": feature}, image[None].to(device), [0], ["f"])
    return solve(distortion, SolverSettings(tau=TAU, **settings))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_layer_recovers_the_closed_form(device):
    """h(x) = W·vec(x): σ_uv² = τ / (n·a_uv), a_uv = Σ_c ‖W[:, c,u,v]‖² / (N·s²)."""
    torch.manual_seed(0)
    channels, size, outputs = 3, 8, 24
    weight = torch.randn(outputs, channels * size * size) * torch.linspace(0.2, 2.0, size * size).repeat(channels)
    image = torch.rand(channels, size, size)
    on_device = weight.to(device)
    feature = lambda x: x.flatten(1) @ on_device.T  # noqa: E731
    clean = image[None].flatten(1) @ weight.T
    a = (weight.reshape(outputs, channels, size, size) ** 2).sum((0, 1)) / (clean.numel() * clean.var(unbiased=False))
    sigma_true = torch.sqrt(TAU / (size * size * a)).numpy()

    solution = _solve(feature, image, device, sigma_max=100.0, max_standard_error=0.005)

    log_sigma = solution.log_sigma[0]
    mean_entropy_error = metrics.cid(metrics.entropy_map(log_sigma)) - metrics.cid(
        metrics.entropy_map(np.log(sigma_true))
    )
    assert abs(mean_entropy_error) <= 0.01
    assert np.median(np.abs(np.exp(log_sigma) / sigma_true - 1)) <= 0.05
    assert solution.converged[0] and abs(solution.d_over_tau[0] - 1) <= 0.05
    assert solution.multiplier[0] == pytest.approx(2.0, rel=0.25)  # the linear case's λ


def test_out_of_device_memory_halves_the_batch_and_the_solve_goes_on():
    """Device memory shrinks mid-solve (another process took it) to 48 forward passes: the solver
    halves its batch until the work fits, says so in `max_batch`, goes on from the step it was at
    (no step is run twice), and still reaches the closed form."""
    torch.manual_seed(0)
    weight = torch.randn(12, 4 * 4) * torch.linspace(0.5, 2.0, 16)
    images = torch.rand(8, 1, 4, 4)
    calls = []

    def shrinking_device(x):
        calls.append(len(x))
        if len(calls) > 20 and len(x) > 48:
            raise torch.OutOfMemoryError("simulated: out of device memory")
        return x.flatten(1) @ weight.T

    steps = []
    distortion = Distortion({"f": shrinking_device}, images, list(range(8)), ["f"] * 8)
    solution = solve(distortion, SolverSettings(tau=TAU, sigma_max=100.0), progress=steps.append)
    assert solution.halvings >= 1 and solution.max_batch < SolverSettings.max_batch and max(calls[-50:]) <= 48
    assert len(steps) == SolverSettings.steps
    assert solution.converged.all()
    for image, log_sigma in zip(images, solution.log_sigma):
        clean = image[None].flatten(1) @ weight.T
        a = (weight**2).sum(0).reshape(4, 4) / (clean.numel() * clean.var(unbiased=False))
        sigma_true = torch.sqrt(TAU / (16 * a)).numpy()
        assert np.median(np.abs(np.exp(log_sigma) / sigma_true - 1)) <= 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_identity_layer_is_uniform_at_sqrt_tau_std(device):
    torch.manual_seed(1)
    image = torch.rand(3, 12, 12)
    solution = _solve(lambda x: x, image, device)
    sigma = np.exp(solution.log_sigma[0])
    expected = math.sqrt(TAU) * float(image.std(unbiased=False))
    assert np.median(np.abs(sigma / expected - 1)) <= 0.05
    cid = metrics.cid(metrics.entropy_map(solution.log_sigma[0]))
    assert cid == pytest.approx(metrics.input_cid(image.numpy(), TAU), abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_a_region_the_layer_ignores_saturates_at_sigma_max(device):
    torch.manual_seed(2)
    conv = nn.Conv2d(1, 4, 3, padding=1).to(device)
    feature = lambda x: torch.relu(conv(x[..., :8]))  # noqa: E731  (ignores columns 8..15)
    image = torch.rand(1, 16, 16)
    solution = _solve(feature, image, device, sigma_max=1.0)
    log_sigma = solution.log_sigma[0]
    ignored, used = log_sigma[:, 9:], log_sigma[:, :7]
    assert metrics.saturated_fraction(ignored, 1.0) == 1.0
    assert metrics.saturated_fraction(used, 1.0) == 0.0


def test_sensitivity_ranks_pixels_like_negative_entropy():
    log_sigma = np.random.default_rng(0).normal(size=(6, 6))
    sensitivity = metrics.sensitivity_map(log_sigma)
    assert sensitivity.max() == pytest.approx(1.0)
    assert (np.argsort(sensitivity, axis=None) == np.argsort(-log_sigma, axis=None)).all()


def test_concentration_is_background_minus_foreground():
    entropy = np.zeros((4, 4))
    entropy[0, :] = 2.0
    foreground = np.zeros((4, 4), dtype=bool)
    foreground[2:, :] = True
    assert metrics.concentration(entropy, foreground) == pytest.approx(1.0)


# --- invariances through the whole pipeline (ONNX export -> analyze) -------------------------

MEAN, STD = 0.4, 0.25


class SmallCNN(nn.Module):
    def __init__(self, normalise_inside: bool = False, nhwc: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.normalise_inside = normalise_inside
        self.nhwc = nhwc

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.normalise_inside:
            x = (x - MEAN) / STD
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


def _export(module: nn.Module, path, shape) -> str:
    torch.onnx.export(
        module,
        torch.rand(*shape),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["image"],
        output_names=["out"],
    )
    return str(path)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "blob.png"
    yy, xx = np.mgrid[:16, :16]
    blob = np.exp(-((yy - 7) ** 2 + (xx - 9) ** 2) / 12.0)
    Image.fromarray((255 * (0.2 + 0.7 * blob)).astype(np.uint8)).save(path)
    return path


def _relu_layers(path: str) -> list[str]:
    from onnx_infodiscard.check import open_model
    from onnx_infodiscard.layers import list_layers

    return [layer.name for layer in list_layers(open_model(path)[1]) if layer.op_type == "Relu"]


FAST = SolverSettings(steps=40, samples=8, eval_samples=64)
NORMALISED = Preprocessing(mean=(MEAN,), std=(STD,))


def test_preprocessing_inside_the_graph_or_given_to_the_analyzer_gives_the_same_maps(tmp_path, image_file):
    inside = _export(SmallCNN(normalise_inside=True), tmp_path / "inside.onnx", (1, 1, 16, 16))
    outside = _export(SmallCNN(), tmp_path / "outside.onnx", (1, 1, 16, 16))
    a = analyze(inside, [image_file], _relu_layers(inside), settings=FAST, preprocessing=Preprocessing())
    b = analyze(
        outside,
        [image_file],
        _relu_layers(outside),
        settings=FAST,
        preprocessing=Preprocessing(mean=(MEAN,), std=(STD,)),
    )
    for ra, rb in zip(a.results, b.results):
        assert np.abs(ra.entropy - rb.entropy).max() < 0.02
        assert ra.cid == pytest.approx(rb.cid, abs=2e-3)


def test_nchw_and_nhwc_exports_give_the_same_maps(tmp_path, image_file):
    nchw = _export(SmallCNN(), tmp_path / "nchw.onnx", (1, 1, 16, 16))
    nhwc = _export(SmallCNN(nhwc=True), tmp_path / "nhwc.onnx", (1, 16, 16, 1))
    a = analyze(
        nchw, [image_file], _relu_layers(nchw), settings=FAST, preprocessing=Preprocessing(mean=(MEAN,), std=(STD,))
    )
    b = analyze(
        nhwc,
        [image_file],
        _relu_layers(nhwc),
        settings=FAST,
        preprocessing=Preprocessing(mean=(MEAN,), std=(STD,), layout="nhwc"),
    )
    assert b.input_shape == (1, 16, 16, 1)
    for ra, rb in zip(a.results, b.results):
        assert np.abs(ra.entropy - rb.entropy).max() < 0.02


def test_same_seed_same_numbers_on_cpu(tmp_path, image_file):
    model = _export(SmallCNN(), tmp_path / "m.onnx", (1, 1, 16, 16))
    runs = [
        analyze(model, [image_file], ["auto"], settings=FAST, device="cpu", preprocessing=NORMALISED) for _ in range(2)
    ]
    for ra, rb in zip(runs[0].results, runs[1].results):
        assert np.array_equal(ra.log_sigma, rb.log_sigma)
        assert ra.d_over_tau == rb.d_over_tau
    other = analyze(
        model, [image_file], ["auto"], settings=SolverSettings(**{**FAST.__dict__, "seed": 1}), preprocessing=NORMALISED
    )
    assert not np.array_equal(other.results[0].log_sigma, runs[0].results[0].log_sigma)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_steps_keep_the_answers(tmp_path, image_file, precision):
    """Autocast only changes the optimisation's arithmetic: the maps stay those of fp32 (same seed)
    well within seed-to-seed noise, and D/τ is still measured in fp32 against the budget."""
    model = _export(SmallCNN(), tmp_path / "m.onnx", (1, 1, 16, 16))
    full = analyze(model, [image_file], _relu_layers(model), settings=FAST, device="cpu", preprocessing=NORMALISED)
    low = analyze(
        model,
        [image_file],
        _relu_layers(model),
        settings=SolverSettings(**{**FAST.__dict__, "precision": precision}),
        device="cpu",
        preprocessing=NORMALISED,
    )
    for a, b in zip(full.results, low.results):
        assert b.converged and abs(b.d_over_tau - 1) <= 0.05
        assert abs(a.cid - b.cid) < 0.01
        assert np.corrcoef(a.log_sigma.ravel(), b.log_sigma.ravel())[0, 1] > 0.98
    assert low.to_json()["parameters"]["precision"] == precision


def test_channels_last_keeps_the_answers_and_auto_is_contiguous_on_cpu(tmp_path, image_file):
    """The activation layout only changes the convolutions' summation order, never the maps; the
    report records the layout that `auto` chose, so a run can be repeated exactly."""
    model = _export(SmallCNN(), tmp_path / "m.onnx", (1, 1, 16, 16))
    layers = _relu_layers(model)
    auto = analyze(model, [image_file], layers, settings=FAST, device="cpu", preprocessing=NORMALISED)
    last = analyze(
        model,
        [image_file],
        layers,
        settings=SolverSettings(**{**FAST.__dict__, "memory_format": "channels_last"}),
        device="cpu",
        preprocessing=NORMALISED,
    )
    assert auto.to_json()["parameters"]["memory_format"] == "contiguous"
    assert last.to_json()["parameters"]["memory_format"] == "channels_last"
    for a, b in zip(auto.results, last.results):
        assert b.converged
        assert abs(a.cid - b.cid) < 1e-3
        assert np.corrcoef(a.log_sigma.ravel(), b.log_sigma.ravel())[0, 1] > 0.999


def test_linear_oracle_holds_in_bf16():
    torch.manual_seed(0)
    weight = torch.randn(24, 3 * 8 * 8) * torch.linspace(0.2, 2.0, 64).repeat(3)
    image = torch.rand(3, 8, 8)
    feature = lambda x: nn.functional.linear(x.flatten(1), weight)  # noqa: E731  (autocast casts it)
    clean = feature(image[None])[0]
    a = (weight.reshape(24, 3, 8, 8) ** 2).sum((0, 1)) / (clean.numel() * clean.var(unbiased=False))
    sigma_true = torch.sqrt(TAU / (64 * a)).numpy()
    solution = _solve(feature, image, sigma_max=100.0, max_standard_error=0.005, precision="bf16")
    log_sigma = solution.log_sigma[0]
    error = metrics.cid(metrics.entropy_map(log_sigma)) - metrics.cid(metrics.entropy_map(np.log(sigma_true)))
    assert abs(error) <= 0.01 and np.median(np.abs(np.exp(log_sigma) / sigma_true - 1)) <= 0.05


# --- row-local noise: a row's answer never depends on the rest of the run ---------------------

ROWS_SOURCE = '''
import torch
from torch import nn
from onnx_infodiscard.perturb import Distortion, SolverSettings, solve

def rows_model():
    generator = torch.Generator().manual_seed(7)
    conv1, conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
    for p in [*conv1.parameters(), *conv2.parameters()]:
        p.data = torch.randn(p.shape, generator=generator) * 0.5
    shallow = lambda x: torch.relu(conv1(x))
    deep = lambda x: torch.relu(conv2(torch.relu(conv1(x))))
    images = torch.rand((3, 1, 12, 12), generator=generator)
    return {"shallow": shallow, "deep": deep}, images

ROWS_SETTINGS = SolverSettings(steps=12, samples=8, eval_samples=32, max_eval_samples=256, extra_steps=6)

def solve_rows(order, settings=ROWS_SETTINGS, wrap=None):
    """order: [(image index, layer)]; returns the log σ map of every row, in that order."""
    features, images = rows_model()
    if wrap:
        features = {name: wrap(f) for name, f in features.items()}
    distortion = Distortion(features, images, [i for i, _ in order], [layer for _, layer in order])
    return solve(distortion, settings)
'''
exec(ROWS_SOURCE)
ALL_ROWS = [(i, layer) for layer in ("shallow", "deep") for i in range(3)]


def test_a_row_alone_with_others_reversed_or_rechunked_gives_the_same_map():
    """Image 1 at the deep layer: alone, with every other row, in reverse order, in chunks of 7
    forward passes: the same map and D/τ to float rounding (conv on other batch sizes)."""
    target = ALL_ROWS.index((1, "deep"))
    alone = solve_rows([(1, "deep")])
    together = solve_rows(ALL_ROWS)
    backwards = solve_rows(ALL_ROWS[::-1])
    small = solve_rows(ALL_ROWS, SolverSettings(**{**ROWS_SETTINGS.__dict__, "max_batch": 7}))
    assert small.max_batch == 7
    for other, row in ((together, target), (backwards, len(ALL_ROWS) - 1 - target), (small, target)):
        assert np.abs(other.log_sigma[row] - alone.log_sigma[0]).max() <= 1e-5
        assert other.d_over_tau[row] == pytest.approx(alone.d_over_tau[0], abs=1e-5)
        assert other.eval_samples[row] == alone.eval_samples[0]
        assert other.extra_steps[row] == alone.extra_steps[0]
    # rows that missed the budget after the schedule got extra steps, bounded by the setting
    assert (together.extra_steps <= ROWS_SETTINGS.extra_steps).all()
    assert (together.extra_steps[~together.converged] == ROWS_SETTINGS.extra_steps).all()
    for i in range(len(ALL_ROWS)):  # and every row equals its own solve with the order reversed
        assert np.abs(together.log_sigma[i] - backwards.log_sigma[len(ALL_ROWS) - 1 - i]).max() <= 1e-5


def test_an_out_of_memory_halving_redraws_the_same_noise():
    """The stage redone after an out-of-memory draws the same noise: same maps as a run without one."""
    calls = []

    def shrinking(feature):
        def run(x):
            calls.append(len(x))
            if len(calls) > 40 and len(x) > 20:
                raise torch.OutOfMemoryError("simulated: out of device memory")
            return feature(x)

        return run

    plain = solve_rows(ALL_ROWS)
    halved = solve_rows(ALL_ROWS, wrap=shrinking)
    assert halved.halvings >= 1 and halved.max_batch < ROWS_SETTINGS.max_batch
    assert np.abs(plain.log_sigma - halved.log_sigma).max() <= 1e-5
    assert np.allclose(plain.d_over_tau, halved.d_over_tau, atol=1e-5)


def test_a_row_in_a_fresh_process_gives_the_same_map(tmp_path):
    import subprocess
    import sys

    script = (
        ROWS_SOURCE
        + f"\nimport numpy\nnumpy.save({str(tmp_path / 'row.npy')!r}, solve_rows([(2, 'shallow')]).log_sigma)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    here = solve_rows(ALL_ROWS).log_sigma[ALL_ROWS.index((2, "shallow"))]
    assert np.abs(np.load(tmp_path / "row.npy")[0] - here).max() <= 1e-5


def test_row_seed_depends_on_seed_content_and_layer_never_on_the_array_or_name():
    from onnx_infodiscard.perturb import image_hash, row_seed

    pixels = np.random.default_rng(0).random((1, 4, 4), dtype=np.float32)
    seed = row_seed(0, pixels, "conv")
    assert seed == row_seed(0, pixels.copy(), "conv") == row_seed(0, torch.from_numpy(pixels), "conv")
    assert seed == row_seed(0, pixels.astype(np.float64), "conv")  # canonical float32 bytes
    assert 0 <= seed < 2**63
    assert (
        len({seed, row_seed(1, pixels, "conv"), row_seed(0, pixels, "conv2"), row_seed(0, pixels + 1e-3, "conv")}) == 4
    )
    assert image_hash(pixels) == image_hash(np.asfortranarray(pixels))


def _linear_oracle():
    torch.manual_seed(0)
    weight = torch.randn(24, 3 * 8 * 8) * torch.linspace(0.2, 2.0, 64).repeat(3)
    image = torch.rand(3, 8, 8)
    clean = image[None].flatten(1) @ weight.T
    a = (weight.reshape(24, 3, 8, 8) ** 2).sum((0, 1)) / (clean.numel() * clean.var(unbiased=False))
    return (lambda x: x.flatten(1) @ weight.T), image, np.log(torch.sqrt(TAU / (64 * a)).numpy())


def test_map_reliability_rises_with_samples_and_is_near_one_on_the_linear_oracle():
    """Split-half reliability (two replicates, Spearman–Brown corrected) grows with the noise samples,
    reaches ~1 where the map is known in closed form, and its square root tracks the map's actual
    correlation with the exact optimum."""
    feature, image, truth = _linear_oracle()
    reliability, accuracy = [], []
    for samples in (2, 16, 64):
        solution = _solve(feature, image, sigma_max=100.0, samples=samples)
        reliability.append(float(solution.reliability[0]))
        accuracy.append(np.corrcoef(solution.log_sigma[0].ravel(), truth.ravel())[0, 1])
        assert solution.converged[0]
    assert reliability[0] < reliability[1] < reliability[2] and reliability[2] >= 0.995
    assert abs(math.sqrt(reliability[2]) - accuracy[2]) < 0.01
    assert _solve(feature, image, sigma_max=100.0, reliability=False).reliability is None


# --- memory-bounded execution --------------------------------------------------------------


def test_a_small_memory_budget_gives_the_same_numbers_and_its_predicted_peak_fits():
    from onnx_infodiscard.perturb import estimate

    features, images = rows_model()
    distortion = Distortion(features, images, [i for i, _ in ALL_ROWS], [layer for _, layer in ALL_ROWS])
    free = estimate(distortion, ROWS_SETTINGS)
    budget = free.fixed_bytes + 6 * free.bytes_per_sample
    tight = estimate(distortion, SolverSettings(**{**ROWS_SETTINGS.__dict__, "max_memory": budget}))
    assert tight.batch == 6 and tight.predicted_peak <= budget and tight.fits
    assert tight.eval_bytes_per_sample < tight.bytes_per_sample  # no autograd graph in the measurement
    constrained = solve_rows(ALL_ROWS, SolverSettings(**{**ROWS_SETTINGS.__dict__, "max_memory": budget}))
    unconstrained = solve_rows(ALL_ROWS)
    assert constrained.max_batch == 6 and constrained.memory_budget == budget
    assert np.abs(constrained.log_sigma - unconstrained.log_sigma).max() <= 1e-5
    assert constrained.peak_memory > 0


PEAK_SOURCE = """
import sys, torch
from torch import nn
from onnx_infodiscard.perturb import Distortion, SolverSettings, peak_memory, solve
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
image = torch.rand((1, 3, 224, 224), generator=generator)
distortion = Distortion({"f": net}, image, [0], ["f"])
settings = SolverSettings(steps=1, samples=32, eval_samples=32, max_eval_samples=64, extra_steps=0,
                          max_memory=int(sys.argv[1]))
before = peak_memory(torch.device("cpu"))
solution = solve(distortion, settings)
print(solution.peak_memory - before, solution.estimate.predicted_peak, solution.max_batch)
"""


def test_the_process_peak_memory_stays_within_a_small_budget():
    """Measured, not assumed: the resident memory a 224×224 solve adds stays within the budget plus
    a margin (allocator and convolution workspaces, measured ~45 MB here), and a large budget lets
    the same solve use more."""
    import subprocess
    import sys

    def peak(budget: int) -> tuple[int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SOURCE, str(budget)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        assert out.returncode == 0, out.stderr
        return tuple(int(v) for v in out.stdout.split())

    small_budget, large_budget = 40 << 20, 1000 << 20
    small, small_predicted, small_batch = peak(small_budget)
    large, _, large_batch = peak(large_budget)
    assert small_predicted <= small_budget and small_batch < large_batch
    assert small <= small_budget + (64 << 20)
    assert large > 2 * small and large <= large_budget + (64 << 20)


def test_the_projection_moves_saturated_positions_when_they_alone_exceed_the_budget():
    """A map at σ_max everywhere on the identity layer carries 100× the budget: a shift that keeps
    saturated positions fixed can never reach it (the deep-row failure of #13). The projection
    moves them too, and lands on the budget at the identity's closed form σ = sqrt(τ)·std(x)."""
    from onnx_infodiscard.perturb import Solver
    from onnx_infodiscard.perturb.project import Projector

    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    solver = Solver(Distortion({"f": lambda x: x}, image, [0], ["f"]), SolverSettings(tau=TAU))
    rows = torch.arange(1)
    theta, ratio, se, _ = Projector(solver, rows).run(torch.zeros(1, 1, 8, 8), rows)
    assert abs(float(ratio[0]) - 1) <= 0.05 and float(se[0]) <= 0.01
    expected = math.log(math.sqrt(TAU) * float(image.std(unbiased=False)))
    assert np.allclose(theta.numpy(), expected, atol=0.03)
