"""Property-based tests of the CLI's contract over generated inputs (numeric options, model cards,
boxes CSVs): exit code 0 or 2, at most one `error:` line, no traceback, no complete-looking output on
failure, nothing written outside --out. In process (`main.run`) and on paths that fail fast, so the
whole file stays well under two minutes on one CPU thread."""

from __future__ import annotations

import io
import json
import math
import shutil
import string
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from onnx_infodiscard.embedded import DEFAULT_MODEL
from onnx_infodiscard_cli import main
from onnx_infodiscard_cli.validate import MAX_GRID, MAX_SAMPLES, MAX_SEED, MAX_STEPS

IMAGE = sorted((DEFAULT_MODEL.parent / "images").glob("*.png"))[0]
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NO_SHRINK = [Phase.explicit, Phase.generate]


def run_in(folder: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main.run(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_contract(folder: Path, before: set[str], code: int, stderr: str, codes=(0, 2)) -> str:
    """The contract every run keeps; returns the error line ('' on success)."""
    assert code in codes, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, stderr
    assert (len(errors) == 1) == (code != 0), stderr
    out = folder / "out"
    if code != 0:
        assert not (out / "report.json").exists()  # no complete-looking report
    assert {p.name for p in folder.iterdir()} <= before | {"out"}  # nothing outside --out
    return errors[0] if errors else ""


# --- numeric options ----------------------------------------------------------------------------


def _finite(low: float | None = None, high: float | None = None, low_open: bool = False):
    def ok(v: float) -> bool:
        above = low is None or (v > low if low_open else v >= low)
        return math.isfinite(v) and above and (high is None or v <= high)

    return ok


FLOAT_OPTIONS = {
    "--tau": _finite(0, low_open=True),
    "--sigma-max": _finite(0, low_open=True),
    "--scale": _finite(0, low_open=True),
}
INT_OPTIONS = {
    "--steps": (1, MAX_STEPS),
    "--samples": (1, MAX_SAMPLES),
    "--grid": (1, MAX_GRID),
    "--seed": (0, MAX_SEED),
}

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "-0", "1e-320", "", "abc", "1,2", "0x10", "--"]),
)


def _valid(option: str, text: str) -> bool:
    if option in FLOAT_OPTIONS:
        try:
            return FLOAT_OPTIONS[option](float(text))
        except ValueError:
            return False
    head, dot, fraction = text.strip().partition(".")
    if dot and fraction and set(fraction) == {"0"}:
        text = head  # Typer reads an integer written with a zero fraction ("10.0") as that integer
    try:
        value = int(text)
    except ValueError:
        return False
    low, high = INT_OPTIONS[option]
    return low <= value <= high


@FAST
@given(option=st.sampled_from(sorted(FLOAT_OPTIONS) + sorted(INT_OPTIONS)), value=numbers)
def test_numeric_options(option, value):
    text = repr(value) if isinstance(value, float) else str(value)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code, _, stderr = run_in(
            folder, "analyze", str(folder / "missing.onnx"), option, text, "--out", str(folder / "out")
        )
        line = assert_contract(folder, set(), code, stderr, codes=(2,))
    if _valid(option, text):
        assert "missing.onnx" in line, line  # accepted: the run went on to the (missing) model
    else:
        assert line.startswith(f"error: {option}") or "requires an argument" in line, line


vector = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300)), min_size=0, max_size=5
)


@FAST
@given(option=st.sampled_from(["--mean", "--std", "--input-shape", "--fg"]), values=vector)
def test_list_options(option, values):
    text = ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code, _, stderr = run_in(
            folder, "analyze", str(folder / "missing.onnx"), option, text or "x", "--out", str(folder / "out")
        )
        line = assert_contract(folder, set(), code, stderr, codes=(2,))
    finite = all(math.isfinite(v) for v in values)
    if not values or not finite:
        assert line.startswith(f"error: {option}"), line


# --- model cards --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
CARD_KEYS = ["input", "preprocessing", "suggested_layers", "images", "train_images", "foreground_boxes", "labels"]
PREPROCESSING_KEYS = ["preset", "scale", "mean", "std", "layout", "bgr"]
cards = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(CARD_KEYS), json_values, max_size=4),
    st.fixed_dictionaries(
        {"preprocessing": st.dictionaries(st.sampled_from(PREPROCESSING_KEYS), json_values, max_size=4)}
    ),
)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("card")
    shutil.copy(DEFAULT_MODEL, folder / "model.onnx")
    return folder


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(card=cards)
@example(card=None)  # seen crashing (AttributeError), so the strict mark holds until the fix lands
@example(card={"preprocessing": {"mean": "a"}})
def test_model_cards(model_folder, card):
    """Any JSON as the sidecar card: a one-line error naming the problem, or the run reaches the images."""
    (model_folder / "model.onnx.json").write_text(json.dumps(card))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code, _, stderr = run_in(
            folder,
            "analyze",
            str(model_folder / "model.onnx"),
            str(folder / "missing.png"),
            "--out",
            str(folder / "out"),
        )
        assert_contract(folder, set(), code, stderr, codes=(2,))


# --- boxes CSVs ---------------------------------------------------------------------------------

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10, 40).map(str),
    st.text(alphabet=string.printable, max_size=5),
    st.just(IMAGE.name),
)
headers = st.permutations(["file", "x0", "y0", "x1", "y1", "label"]).map(lambda cols: cols[: 4 + len(cols) % 3])


@settings(max_examples=15, deadline=None, database=None, phases=NO_SHRINK)
@given(header=headers, rows=st.lists(st.lists(cells, min_size=0, max_size=7), max_size=4), bom=st.booleans())
@example(header=["file", "x0", "y0", "x1", "y1"], rows=[[IMAGE.name, "0", "0", "inf", "3"]], bom=False)  # OverflowError
@example(header=["file", "x0", "y0", "x1", "y1"], rows=[[IMAGE.name, "0", "0", "3", "3"]], bom=True)
def test_boxes_csv(header, rows, bom):
    """Any CSV as --fg-boxes: a one-line error naming the CSV, or the run goes on (to the layer it cannot find)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = folder / "boxes.csv"
        text = ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows)
        csv.write_text(("\ufeff" if bom else "") + text)
        code, _, stderr = run_in(
            folder,
            "analyze",
            str(DEFAULT_MODEL),
            str(IMAGE),
            "--fg-boxes",
            str(csv),
            "-l",
            "no_such_layer",
            "--out",
            str(folder / "out"),
        )
        assert_contract(folder, {"boxes.csv"}, code, stderr, codes=(2,))
