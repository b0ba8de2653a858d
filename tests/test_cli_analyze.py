"""`infodiscard analyze` end to end through the CLI: the embedded default, outputs, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_infodiscard.embedded import DEFAULT_MODEL

QUICK = ["--steps", "20", "--samples", "8"]
IMAGES = DEFAULT_MODEL.parent / "images"


def infodiscard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnx_infodiscard_cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def two_digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    for path in sorted(IMAGES.glob("*.png"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_default_model_and_images_need_no_arguments(tmp_path):
    """The README's main job, shortened: no model, no images, the shipped card does the rest."""
    out = tmp_path / "report"
    result = infodiscard("analyze", *QUICK, "--out", str(out), "--json")
    assert result.returncode in (0, 4), result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == len(list(IMAGES.glob("*.png")))
    assert [row["layer"] for row in summary["layers"]] == json.loads(
        (DEFAULT_MODEL.parent / "digits_cnn.onnx.json").read_text()
    )["suggested_layers"]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["sha256"] and report["preprocessing"]["mean"] == [0.1307]
    assert report["parameters"]["foreground"].startswith("boxes")  # the card's boxes
    first = report["results"][0]
    assert isinstance(first["converged"], bool) and isinstance(first["d_over_tau"], float)
    assert first["concentration"] is not None
    for name in ("report.html", "metrics.csv", "maps.npz", "cid_vs_depth.png"):
        assert (out / name).is_file()


def test_converged_run_exits_zero_and_reports_d_over_tau(two_digits, tmp_path):
    result = infodiscard(
        "analyze",
        str(DEFAULT_MODEL),
        str(two_digits),
        "-l",
        "/relu2/Relu_output_0",
        "--fg",
        "center",
        "--out",
        str(tmp_path / "r"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["converged"] is True
    assert abs(summary["layers"][0]["d_over_tau"] - 1) <= 0.05


def test_a_run_that_cannot_converge_says_so_and_exits_4(two_digits, tmp_path):
    result = infodiscard(
        "analyze",
        str(DEFAULT_MODEL),
        str(two_digits),
        "--steps",
        "1",
        "--samples",
        "1",
        "--sigma-max",
        "0.001",
        "--out",
        str(tmp_path / "r"),
    )
    assert result.returncode == 4
    assert "did not converge" in result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert not any(r["converged"] for r in report["results"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tau", "0"], ["--tau", "> 0"]),
        (["--tau", "-1"], ["--tau"]),
        (["--steps", "0"], ["--steps"]),
        (["--precision", "fp8"], ["--precision", "bf16"]),
        (["--memory-format", "nhwc"], ["--memory-format", "channels_last"]),
        (["--device", "cuda"], ["cuda", "--device"]),
        (["--fg", "0,0,500,10"], ["outside the image"]),
        (["-l", "/relu9/Relu"], ["unknown layer", "did you mean"]),
    ],
)
def test_bad_options_are_one_line_errors(two_digits, tmp_path, args, words):
    if args[:2] == ["--device", "cuda"]:
        import torch

        assert not torch.cuda.is_available(), "this test needs a machine without CUDA"
    out = tmp_path / "r"
    result = infodiscard("analyze", str(DEFAULT_MODEL), str(two_digits), *QUICK, *args, "--out", str(out))
    assert_one_line_error(result, 2, *words)
    assert not out.exists()


def test_a_file_that_is_not_an_image(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = infodiscard("analyze", str(DEFAULT_MODEL), str(bad), *QUICK, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, 2, "notes.png", "cannot read it as an image")
    assert not (tmp_path / "r").exists()


def test_an_array_with_the_wrong_channel_count(tmp_path):
    array = tmp_path / "rgb.npy"
    np.save(array, np.random.default_rng(0).random((3, 28, 28), dtype=np.float32))
    result = infodiscard("analyze", str(DEFAULT_MODEL), str(array), *QUICK, "--out", str(tmp_path / "r"))
    assert_one_line_error(result, 2, "3 channels", "takes 1")


def test_an_output_folder_that_is_not_writable(two_digits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = infodiscard("analyze", str(DEFAULT_MODEL), str(two_digits), *QUICK, "--out", str(blocker / "r"))
    assert_one_line_error(result, 2, str(blocker))


def test_boxes_csv_drives_concentration(two_digits, tmp_path):
    names = sorted(p.name for p in two_digits.glob("*.png"))
    csv = tmp_path / "boxes.csv"
    csv.write_text("label,file,y0,x0,y1,x1\n" + "".join(f"d,{n},6,6,22,22\n" for n in names))
    result = infodiscard(
        "analyze",
        str(DEFAULT_MODEL),
        str(two_digits),
        *QUICK,
        "--fg-boxes",
        str(csv),
        "-l",
        "/relu3/Relu_output_0",
        "--out",
        str(tmp_path / "r"),
        "--json",
    )
    assert result.returncode in (0, 4), result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert all(r["concentration"] is not None for r in report["results"])


def test_images_of_any_mode_are_converted(tmp_path):
    rgb = tmp_path / "colour.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(rgb)
    from onnx_infodiscard.images import load_image

    image = load_image(rgb, (1, 28, 28))
    assert image.pixels.shape == (1, 28, 28) and image.original_size == (40, 30)
    assert 0 <= image.pixels.min() and image.pixels.max() <= 1
