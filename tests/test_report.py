"""The report folder: files and their contents, atomic writes, unwritable outputs, HTML rendering."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_infodiscard.analysis import ImageSummary, LayerResult, Report
from onnx_infodiscard.crosscheck import CrossCheck, LayerAgreement
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.layers import Layer
from onnx_infodiscard.output import analysis as report_module
from onnx_infodiscard.output import figures, folders
from onnx_infodiscard.output.analysis import summary_json, write_report
from onnx_infodiscard.output.manifest import MANIFEST
from onnx_infodiscard.perturb import SolverSettings
from onnx_infodiscard.preprocess import Preprocessing

LAYER_NAMES = ("/conv1/Conv_output_0", "relu_1", "/fc/Gemm_output_0")


def make_report(
    n_images: int = 3, size: int = 12, unconverged: bool = True, concentration: bool = True, seed: int = 0
) -> Report:
    """A small but complete Report built straight from the dataclasses, with random maps."""
    rng = np.random.default_rng(seed)
    layers = tuple(
        Layer(index=3 * k + 1, name=name, op_type=op, node_name=f"node{k}", shape=(1, 4, size, size), depth=depth)
        for k, (name, op, depth) in enumerate(zip(LAYER_NAMES, ("Conv", "Relu", "Gemm"), (0.25, 0.5, 1.0)))
    )
    settings = SolverSettings(steps=20, samples=4)
    images, results, pixels = [], [], []
    for i in range(n_images):
        name = f"digit_{i}.png"
        image = rng.random((1, size, size)).astype(np.float32)
        pixels.append(image)
        base = -1.0 - 0.1 * i
        images.append(ImageSummary(name, base, concentration))
        for k, layer in enumerate(layers):
            log_sigma = rng.normal(-1.5 + 0.5 * k, 0.3, (size, size)).astype(np.float32)
            entropy = log_sigma + 1.4189385
            sensitivity = np.exp(-2 * (log_sigma - log_sigma.min()))
            sensitivity = sensitivity / sensitivity.max()
            bad = unconverged and i == 1 and k == 2
            results.append(
                LayerResult(
                    image=name,
                    layer=layer.name,
                    layer_index=layer.index,
                    depth=layer.depth,
                    log_sigma=log_sigma,
                    entropy=entropy,
                    sensitivity=sensitivity,
                    cid=float(entropy.mean()),
                    cid_total=float(entropy.sum()),
                    delta_cid=float(entropy.mean()) - base,
                    concentration=(0.1 * k if concentration else None),
                    saturated_fraction=0.0 if k < 2 else float("nan"),
                    converged=not bad,
                    d_over_tau=(1.31 if bad else 1.01),
                    d_over_tau_se=0.004,
                    eval_samples=64,
                    multiplier=float("inf") if bad else 2.5,
                    steps=20,
                    seconds=0.01,
                )
            )
    crosscheck = CrossCheck(
        provider="CPUExecutionProvider",
        note="onnxruntime ran on CPU",
        tolerance=1e-4,
        layers=tuple(LayerAgreement(layer.name, 1e-7, 2e-7, True) for layer in layers),
    )
    return Report(
        tool_version="0.1.0",
        model_path="/models/<tiny>&cnn.onnx",
        model_sha256="ab" * 32,
        input_name="input",
        input_shape=(1, 1, size, size),
        preprocessing=Preprocessing(source="card"),
        settings=settings,
        foreground="center (central box, 2/3 of each side)" if concentration else None,
        device="cpu",
        layers=layers,
        crosscheck=crosscheck,
        batch_safe=True,
        passes=("fold_constants: 2 nodes",),
        images=tuple(images),
        results=tuple(results),
        canonical_images=tuple(pixels),
        seconds=1.25,
        notes=("a note with <markup> & ampersand",),
    )


def leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture
def fast_plots(monkeypatch):
    """Stub the plots (tests of the folder's lifecycle need no real figures)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    monkeypatch.setattr(figures, "plot_layer", lambda *args, **kwargs: buffer.getvalue())
    monkeypatch.setattr(figures, "plot_depth", lambda *args, **kwargs: buffer.getvalue())


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One full report with real plots, shared by the content and rendering tests."""
    report = make_report()
    root = tmp_path_factory.mktemp("written")
    return report, root, write_report(report, root / "out")


# --------------------------------------------------------------------------------------------- contents


def test_writes_every_file_with_expected_content(written):
    report, tmp_path, out = written
    assert out == (tmp_path / "out").resolve()
    names = sorted(p.name for p in out.iterdir())
    layer_pngs = ["layer_1_conv1_Conv_output_0.png", "layer_4_relu_1.png", "layer_7_fc_Gemm_output_0.png"]
    assert names == sorted(
        ["report.json", "metrics.csv", "maps.npz", "report.html", "cid_vs_depth.png", *layer_pngs, MANIFEST]
    )
    assert leftovers(tmp_path, "out") == []

    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["schema_version"] >= 1
    assert data["model"]["sha256"] == "ab" * 32
    assert len(data["results"]) == 9
    for result in data["results"]:
        assert isinstance(result["converged"], bool)
        assert isinstance(result["d_over_tau"], float)
    assert [r["converged"] for r in data["results"]].count(False) == 1
    bad = next(r for r in data["results"] if not r["converged"])
    assert bad["multiplier"] is None and bad["saturated_fraction"] is None  # inf / nan -> null
    assert data["summary"]["converged"] is False

    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report.images) * len(report.layers)
    assert tuple(rows[0].keys()) == report_module.CSV_COLUMNS + report_module.RU_COLUMNS
    assert all(row["ru"] == "" for row in rows)  # no RU asked for
    assert {(r["image"], r["layer"]) for r in rows} == {(r.image, r.layer) for r in report.results}
    assert math.isclose(float(rows[0]["cid"]), report.results[0].cid, rel_tol=1e-12)
    assert [r["converged"] for r in rows].count("false") == 1

    with np.load(out / "maps.npz") as maps:
        for r in report.results:
            np.testing.assert_allclose(maps[f"{r.image}|{r.layer}|entropy"], r.entropy, rtol=1e-6)
            np.testing.assert_allclose(maps[f"{r.image}|{r.layer}|sensitivity"], r.sensitivity, rtol=1e-6)

    for png in ["cid_vs_depth.png", *layer_pngs]:
        with Image.open(out / png) as image:
            image.load()
            assert image.size[0] > 300 and image.size[1] > 200
            assert np.asarray(image.convert("L")).std() > 5  # not blank

    page = (out / "report.html").read_text()
    for name in LAYER_NAMES:
        assert name in page
    assert "ab" * 32 in page
    assert "NOT CONVERGED" in page
    assert "&lt;markup&gt; &amp; ampersand" in page and "<markup>" not in page
    assert "/models/&lt;tiny&gt;&amp;cnn.onnx" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|<link|@import|url\(", page, re.I)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 + len(layer_pngs)
    assert all(s.startswith("data:image/png;base64,") for s in sources)


def test_many_images_show_the_first_eight_and_say_so(tmp_path):
    report = make_report(n_images=10, size=6, unconverged=False, concentration=False)
    out = write_report(report, tmp_path / "many")
    page = (out / "report.html").read_text()
    assert "Showing the first 8 of 10 images" in page
    assert "did NOT CONVERGE" not in page
    with (out / "metrics.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 30
    with Image.open(out / "cid_vs_depth.png") as image:
        wide_without_concentration = image.size[0]
    out2 = write_report(make_report(n_images=2, size=6), tmp_path / "conc")
    with Image.open(out2 / "cid_vs_depth.png") as image:
        assert image.size[0] > wide_without_concentration  # a third panel for concentration


def test_summary_json(tmp_path):
    report = make_report()
    summary = summary_json(report, tmp_path / "out")
    json.dumps(summary, allow_nan=False)  # raises on NaN/inf anywhere
    assert summary["model"] == report.model_path and summary["sha256"] == report.model_sha256
    assert summary["parameters"]["tau"] == report.settings.tau
    assert summary["converged"] is False and len(summary["unconverged"]) == 1
    assert [m["layer"] for m in summary["layers"]] == list(LAYER_NAMES)
    assert summary["out"] == str(tmp_path / "out")
    assert summary["notes"] == list(report.notes)
    assert summary_json(report)["out"] is None


def test_duplicate_image_names_keep_their_maps_apart(tmp_path, fast_plots):
    report = make_report(n_images=2, unconverged=False)
    same = tuple(ImageSummary("x.png", i.cid_input, i.has_foreground) for i in report.images)
    results = tuple(
        LayerResult(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "image": "x.png"}) for r in report.results
    )
    report = Report(
        **{**{f: getattr(report, f) for f in report.__dataclass_fields__}, "images": same, "results": results}
    )
    out = write_report(report, tmp_path / "dup")
    with np.load(out / "maps.npz") as maps:
        assert len(maps.files) == 3 * len(results)
        np.testing.assert_allclose(maps[f"x.png#1|{LAYER_NAMES[0]}|entropy"], results[3].entropy, rtol=1e-6)


# --------------------------------------------------------------------------------------------- atomicity


def test_failure_mid_way_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(figures, "plot_depth", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(make_report(size=6), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_old_report_intact(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "plot_depth", lambda *args, **kwargs: b"\x89PNG stub")
    old = write_report(make_report(seed=1, size=6), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    calls = []

    def fail_on_second_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # even an interrupt cleans up
        return real(*args, **kwargs)

    real = figures.plot_layer
    monkeypatch.setattr(figures, "plot_layer", fail_on_second_layer)
    with pytest.raises(KeyboardInterrupt):
        write_report(make_report(seed=2, size=6), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert leftovers(tmp_path, "out") == []


def test_replaces_an_earlier_report_but_not_a_file_added_to_it(tmp_path, fast_plots):
    write_report(make_report(seed=1), tmp_path / "out")
    (tmp_path / "out" / "my_notes.txt").write_text("mine")
    with pytest.raises(InputError, match="my_notes.txt"):
        write_report(make_report(seed=2, n_images=2), tmp_path / "out")
    assert (tmp_path / "out" / "my_notes.txt").read_text() == "mine"
    (tmp_path / "out" / "my_notes.txt").unlink()
    out = write_report(make_report(seed=2, n_images=2), tmp_path / "out")
    assert len(json.loads((out / "report.json").read_text())["results"]) == 6
    assert leftovers(tmp_path, "out") == []


def test_failed_swap_restores_the_old_report(tmp_path, monkeypatch, fast_plots):
    old = write_report(make_report(seed=1), tmp_path / "out")
    before = (old / "report.json").read_text()
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(folders.os, "rename", rename)
    with pytest.raises(OSError):
        write_report(make_report(seed=2), tmp_path / "out")
    assert (tmp_path / "out" / "report.json").read_text() == before
    assert leftovers(tmp_path, "out") == []


# --------------------------------------------------------------------------------------------- bad outputs


def test_output_under_a_file_is_an_input_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file") as err:
        write_report(make_report(), blocker / "sub" / "out")
    assert "\n" not in str(err.value) and str(blocker) in str(err.value)
    assert blocker.read_text() == "x"


def test_output_that_is_a_file_is_an_input_error(tmp_path):
    target = tmp_path / "report"
    target.write_text("mine")
    with pytest.raises(InputError, match="existing file"):
        write_report(make_report(), target)
    assert target.read_text() == "mine"
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_with_other_files_is_not_replaced(tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="did not write"):
        write_report(make_report(), folder)
    assert (folder / "thesis.tex").read_text() == "precious"
    assert leftovers(tmp_path, "home") == []


def test_refused_write_is_an_input_error(tmp_path, monkeypatch):
    """What fails even for root (a read-only file system, a full quota): creating the folder itself."""

    def refuse(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(folders.tempfile, "mkdtemp", refuse)
    with pytest.raises(InputError, match="not writable") as err:
        write_report(make_report(), tmp_path / "out")
    assert "Read-only file system" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_seen_by_access_is_an_input_error(tmp_path, monkeypatch):
    """os.access is the up-front check (it also sees read-only mounts for root)."""
    real = os.access
    monkeypatch.setattr(
        folders.os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path else real(path, mode, **kw)
    )
    with pytest.raises(InputError, match="not writable"):
        write_report(make_report(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- rendering


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_check(html_path: Path, workdir: Path) -> bytes:
    """Open `html_path` in headless Chromium, return the screenshot PNG's bytes."""
    binary = _chromium()
    shot = workdir / "screenshot.png"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={workdir / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        "--hide-scrollbars",
        html_path.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return shot.read_bytes()


def test_html_renders_in_headless_chromium(written, tmp_path):
    if _chromium() is None:
        message = "headless Chromium not found (apt-get install chromium) for the report rendering check"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = written[2]
    png = render_check(out / "report.html", tmp_path)
    shot = tmp_path / "check.png"
    shot.write_bytes(png)
    with Image.open(shot) as image:
        image.load()
        assert image.size == (1200, 2000)
        pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    # not blank: text, red alert box and the plot's colours are all on the first screen
    assert pixels.std() > 10
    assert (np.abs(pixels - 255).sum(axis=2) > 60).mean() > 0.05
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 100  # the NOT CONVERGED alert is drawn
