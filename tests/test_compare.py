"""`compare`: the three shipped models on the same digits, aligned by relative depth; its outputs,
and `--fail-if` exit codes end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_infodiscard.audit import parse_rules
from onnx_infodiscard.compare import compare, display_names
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.perturb import SolverSettings

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED = [MODELS_DIR / n / f"{n}.onnx" for n in ("keras_digits", "torch_dynamo_digits", "torchscript_digits")]
IMAGES = MODELS_DIR / "digits_cnn" / "images"
QUICK = ["--steps", "20", "--samples", "8"]


def infodiscard(*args: str) -> subprocess.CompletedProcess:
    """`infodiscard ...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "onnx_infodiscard_cli.main", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def two_digits() -> list[Path]:
    return sorted(IMAGES.glob("*.png"))[:2]


@pytest.fixture(scope="module")
def comparison(two_digits):
    return compare(
        SHIPPED,
        two_digits,
        settings=SolverSettings(steps=20, samples=8),
        device="cpu",
        rules=parse_rules(["cid[-1] > 100", "concentration[0] > 100"]),
    )


def test_every_model_every_suggested_layer_with_its_depth(comparison):
    assert comparison.models == ("keras_digits", "torch_dynamo_digits", "torchscript_digits")
    for name, report in zip(comparison.models, comparison.reports):
        rows = [r for r in comparison.rows if r.model == name]
        card = json.loads(Path(report.model_path + ".json").read_text())
        assert [r.layer for r in rows] == [layer.name for layer in report.layers] == card["suggested_layers"]
        assert len(report.images) == 2 and report.foreground.startswith("boxes")  # the cards' boxes
        depths = [r.depth for r in rows]
        assert depths == sorted(depths) and all(0 < d < 1 for d in depths)
        assert all(r.n_images == 2 and 0 <= r.n_converged <= 2 for r in rows)
        assert all(r.cid is not None and r.concentration is not None for r in rows if r.n_converged)
    # the same images went through every model
    assert len({tuple(i.name for i in report.images) for report in comparison.reports}) == 1


def test_alignment_by_relative_depth(comparison):
    aligned = comparison.aligned()
    assert aligned[0]["reference"] in ("keras_digits", "torch_dynamo_digits")  # 3 layers each, fewest
    assert len(aligned) == 3
    for entry in aligned:
        assert set(entry["layers"]) == set(comparison.models)
        for name, near in entry["layers"].items():
            others = [r.depth for r in comparison.rows if r.model == name]
            assert abs(near["depth"] - entry["depth"]) == min(abs(d - entry["depth"]) for d in others)


def test_rules_are_judged_on_every_model(comparison):
    rules = ("cid[-1] > 100", "concentration[0] > 100")
    assert [(o.model, o.rule) for o in comparison.outcomes] == [(m, r) for r in rules for m in comparison.models]
    # Neither threshold can hold; a rule fails only on a layer without a converged image.
    assert all(o.failed == (o.value is None) for o in comparison.outcomes)
    assert {o.layer for o in comparison.outcomes if o.rule == rules[0]} == {
        [r for r in comparison.rows if r.model == m][-1].layer for m in comparison.models
    }


def test_display_names_stay_apart():
    assert display_names([Path("a/m.onnx"), Path("b/m.onnx"), Path("c/n.onnx")]) == ["a/m", "b/m", "n"]
    assert display_names([Path("a/m.onnx"), Path("a/m.onnx")]) == ["a/m#0", "a/m#1"]


def test_cli_compare_three_models_fail_if_exit_1(tmp_path, two_digits):
    """End to end: three models, a rule that holds: exit 1, one error line, outputs written with outcomes."""
    out = tmp_path / "cmp"
    result = infodiscard(
        "compare",
        *map(str, SHIPPED),
        "--images",
        str(two_digits[0]),
        "--images",
        str(two_digits[1]),
        *QUICK,
        "--out",
        str(out),
        "--json",
        "--fail-if",
        "cid[-1] > -100",
        "--fail-if",
        "cid[0] > 100",
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: audit failed: 3 of 6"), result.stderr
    printed = json.loads(result.stdout)
    assert printed["audit"]["failed"] is True
    data = json.loads((out / "comparison.json").read_text())
    failed = [(o["model"], o["rule"]) for o in data["audit"]["outcomes"] if o["failed"]]
    assert failed == [(m, "cid[-1] > -100") for m in ("keras_digits", "torch_dynamo_digits", "torchscript_digits")]
    assert "AUDIT FAILED" in (out / "comparison.html").read_text()
    assert {row["model"] for row in data["table"]} == {"keras_digits", "torch_dynamo_digits", "torchscript_digits"}


def test_cli_compare_rules_that_hold_nowhere_pass(tmp_path, two_digits):
    out = tmp_path / "cmp"
    # graph index -3: each model's last ReLU (before the pooling and the head)
    result = infodiscard(
        "compare",
        *map(str, SHIPPED[1:]),
        "--images",
        str(two_digits[0]),
        "--layers",
        "-3",
        *QUICK,
        "--out",
        str(out),
        "--fail-if",
        "delta_cid[-1] > 100",
    )
    assert result.returncode in (0, 4), result.stderr  # 4 only if a result missed its budget at 20 steps
    data = json.loads((out / "comparison.json").read_text())
    assert data["audit"]["failed"] is (False if result.returncode == 0 else data["audit"]["failed"])
    assert [row["op_type"] for row in data["table"]] == ["Relu", "Relu"] and "comparison:" in result.stdout


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--fail-if", "cid[-1] >> 1"], 2, ["error: --fail-if: 'cid[-1] >> 1'", "METRIC[LAYER] OP NUMBER"]),
        (["--fail-if", "cdi[0] > 1"], 2, ["unknown metric 'cdi'", "did you mean 'cid'"]),
        (["--steps", "0"], 2, ["--steps: 0"]),
    ],
)
def test_cli_compare_bad_input_exit_2_before_any_work(tmp_path, args, code, words):
    result = infodiscard("compare", *map(str, SHIPPED), "--out", str(tmp_path / "cmp"), *args)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "cmp").exists()


def test_compare_without_images_uses_the_folder_all_cards_name(tmp_path):
    from onnx_infodiscard.compare import _shared_card_images

    assert _shared_card_images(SHIPPED) == [IMAGES.resolve()]
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(SHIPPED[1].read_bytes())
    lonely.with_name("lonely.onnx.json").write_text(json.dumps({"images": "elsewhere"}))
    with pytest.raises(InputError, match="different image folders"):
        _shared_card_images([SHIPPED[0], lonely])
