"""`--fail-if` rules: parsing, layer resolution (names, indices, negative from the deepest), the
means they judge, and the one-line errors. Exit codes through the CLI are in test_compare.py."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from onnx_infodiscard.audit import Rule, evaluate, failures, parse_rule, parse_rules, raise_on_failure
from onnx_infodiscard.errors import AuditFailed, InfodiscardError, InputError

TABLE = [  # one model's per-layer means, deliberately out of graph order
    {"layer": "deep", "index": 7, "depth": 0.8, "n_images": 3, "cid": -1.2, "delta_cid": -0.3, "concentration": 0.5},
    {"layer": "shallow", "index": 1, "depth": 0.2, "n_images": 3, "cid": -2.0, "delta_cid": -1.1, "concentration": 0.1},
    {"layer": "middle", "index": 4, "depth": 0.5, "n_images": 0, "cid": None, "delta_cid": None, "concentration": None},
]


@pytest.mark.parametrize(
    "text, want",
    [
        ("cid[-1] > 1.2", Rule("cid[-1] > 1.2", "cid", "-1", ">", 1.2)),
        (
            "delta_cid[ /relu1/Relu_output_0 ]<=0",
            Rule("delta_cid[ /relu1/Relu_output_0 ]<=0", "delta_cid", "/relu1/Relu_output_0", "<=", 0.0),
        ),
        ("  CONCENTRATION[0] >= -3e-1 ", Rule("CONCENTRATION[0] >= -3e-1", "concentration", "0", ">=", -0.3)),
        ("ru[model/conv[2]/Relu:0] < 4", Rule("ru[model/conv[2]/Relu:0] < 4", "ru", "model/conv[2]/Relu:0", "<", 4.0)),
    ],
)
def test_rules_parse(text, want):
    assert parse_rule(text) == want


@pytest.mark.parametrize(
    "text, words",
    [
        ("cid[-1] 1.2", ["METRIC[LAYER] OP NUMBER"]),
        ("cid[-1] == 1.2", ["METRIC[LAYER] OP NUMBER"]),
        ("cdi[0] > 1", ["unknown metric 'cdi'", "did you mean 'cid'"]),
        ("cid[] > 1", ["layer name or index"]),
        ("cid[0] > abc", ["'abc' is not a number"]),
        ("cid[0] > nan", ["finite"]),
        ("cid > 1", ["METRIC[LAYER] OP NUMBER"]),
    ],
)
def test_bad_rules_are_one_line_input_errors(text, words):
    with pytest.raises(InputError) as caught:
        parse_rule(text)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    for word in words:
        assert word in message, message


def test_indices_count_among_the_chosen_layers_in_graph_order():
    outcomes = evaluate(
        parse_rules(["cid[-1] > -1.5", "cid[0] > -1.5", "cid[shallow] <= -2", "delta_cid[1] < 0"]), TABLE
    )
    assert [(o.layer, o.value, o.failed) for o in outcomes] == [
        ("deep", -1.2, True),
        ("shallow", -2.0, False),
        ("shallow", -2.0, True),
        ("middle", None, True),
    ]
    assert outcomes[0].n_images == 3
    # A layer without a converged image cannot pass a gate: it fails, saying why.
    assert outcomes[3].reason == "no converged result to judge"
    assert [o.rule for o in failures(outcomes)] == ["cid[-1] > -1.5", "cid[shallow] <= -2", "delta_cid[1] < 0"]


def test_unknown_layer_and_index_out_of_range_name_the_fix():
    with pytest.raises(InputError, match=r"unknown layer 'shalow'.*did you mean 'shallow'"):
        evaluate([parse_rule("cid[shalow] > 0")], TABLE)
    with pytest.raises(InputError, match=r"index 3 is out of range; 3 layer\(s\) were chosen"):
        evaluate([parse_rule("cid[3] > 0")], TABLE)
    evaluate([parse_rule("cid[-3] > 0")], TABLE)  # -3 is the first of three


def test_a_metric_the_run_did_not_measure_is_a_usage_error():
    no_foreground = [{**row, "concentration": None} for row in TABLE]
    with pytest.raises(InputError, match="concentration needs a foreground"):
        evaluate([parse_rule("concentration[-1] < 0")], no_foreground)
    with pytest.raises(InputError, match="ru needs the reconstruction-uncertainty"):
        evaluate([parse_rule("ru[0] > 1")], TABLE)


def test_several_models_names_apply_where_present_indices_everywhere():
    rows = [{**row, "model": "a"} for row in TABLE] + [
        {"model": "b", "layer": "x", "index": 0, "n_images": 2, "cid": -0.5},
        {"model": "b", "layer": "y", "index": 2, "n_images": 2, "cid": -0.1},
    ]
    deepest = evaluate([parse_rule("cid[-1] > -1")], rows)
    assert [(o.model, o.layer, o.failed) for o in deepest] == [("a", "deep", False), ("b", "y", True)]
    named = evaluate([parse_rule("cid[x] > -1")], rows)
    assert [(o.model, o.layer, o.failed) for o in named] == [("b", "x", True)]
    assert "b: cid[x] > -1 -> cid[x] = -0.5: FAILED" == named[0].describe()
    with pytest.raises(InputError, match="unknown layer 'z'"):
        evaluate([parse_rule("cid[z] > -1")], rows)


def test_a_report_is_judged_on_the_means_it_shows():
    report = SimpleNamespace(layers=(), results=(), layer_means=lambda: [dict(row) for row in TABLE])
    assert [o.value for o in evaluate([parse_rule("concentration[-1] > 0.4")], report)] == [0.5]


def test_failure_is_one_line_with_exit_code_1():
    raise_on_failure(evaluate([parse_rule("cid[0] > 0")], TABLE))  # nothing held: no error
    with pytest.raises(AuditFailed) as caught:
        raise_on_failure(evaluate(parse_rules(["cid[0] < 0", "cid[-1] < 0"]), TABLE))
    assert isinstance(caught.value, InfodiscardError) and caught.value.exit_code == 1
    message = str(caught.value)
    assert "\n" not in message and message.startswith("audit failed: 2 of 2")
    assert "cid[0] < 0 -> cid[shallow] = -2: FAILED" in message


def test_analyze_fail_if_exit_codes(tmp_path):
    """Through `infodiscard analyze`: a bad rule is exit 2, a rule that holds is exit 1 with the report."""
    cli = [sys.executable, "-m", "onnx_infodiscard_cli.main"]
    from onnx_infodiscard.embedded import DEFAULT_MODEL

    image = sorted((DEFAULT_MODEL.parent / "images").glob("*.png"))[0]
    quick = ["--steps", "20", "--samples", "8", "--layer", "-1", "--out"]
    bad = subprocess.run(
        [*cli, "analyze", str(DEFAULT_MODEL), str(image), *quick, str(tmp_path / "a"), "--fail-if", "cid[0] >> 1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --fail-if"), bad.stderr
    held = subprocess.run(
        [*cli, "analyze", str(DEFAULT_MODEL), str(image), *quick, str(tmp_path / "b"), "--fail-if", "cid[-1] > -100"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert held.returncode == 1, held.stderr
    assert "audit failed" in held.stderr and (tmp_path / "b" / "report.json").is_file()
