"""The CLI's contract, in process (`main.run(argv)` returns the exit code): every failure is one
`error:` line on stderr with its documented exit code, options are checked before any work, user
text is never read as markup, dependency warnings stay off stderr unless --debug."""

from __future__ import annotations

import io
import json
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_infodiscard.errors import AuditFailed, InfodiscardError, InputError, NotConverged
from onnx_infodiscard_cli import main
from onnx_infodiscard_cli.commands import layers as layers_command

MARKUP_NAME = "relu[/red][bold]out"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main.run(list(args))
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_error(result: Result, code: int, *words: str) -> None:
    assert result.code == code, result
    assert len(result.lines) == 1 and result.lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.lines[0], result.lines[0]


@pytest.fixture(scope="module")
def markup_model(tmp_path_factory) -> Path:
    """Conv -> Relu -> GlobalAveragePool whose tensor names and folder are Rich markup."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv[red]"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv[red]"], [MARKUP_NAME], name="relu[/]"),
        helper.make_node("GlobalAveragePool", [MARKUP_NAME], ["y"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "markup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])],
        [weight],
    )
    folder = tmp_path_factory.mktemp("m") / "x[" / "red]"  # the path reads .../x[/red]/[bold]model.onnx
    folder.mkdir(parents=True)
    path = folder / "[bold]model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["analyze", "--tau", "inf"], ["--tau", "> 0"]),
        (["analyze", "--tau", "nan"], ["--tau"]),
        (["analyze", "--tau", "0"], ["--tau", "> 0"]),
        (["analyze", "--sigma-max", "inf"], ["--sigma-max"]),
        (["analyze", "--std", "nan"], ["--std"]),
        (["analyze", "--std", "0.5,0"], ["--std", "positive"]),
        (["analyze", "--mean", "1,inf"], ["--mean"]),
        (["analyze", "--scale", "inf"], ["--scale"]),
        (["analyze", "--scale", "-1"], ["--scale"]),
        (["check", "m.onnx", "--tolerance", "nan"], ["--tolerance"]),
        (["analyze", "--seed", str(2**64)], ["--seed", str(2**63 - 1)]),
        (["analyze", "--seed", "-1"], ["--seed"]),
        (["analyze", "--steps", "1000000000000"], ["--steps", "1000000"]),
        (["analyze", "--steps", "0"], ["--steps"]),
        (["analyze", "--samples", "0"], ["--samples"]),
        (["analyze", "--grid", "0"], ["--grid"]),
        (["analyze", "--input-shape", "1,28"], ["--input-shape", "four positive sizes"]),
        (["analyze", "--input-shape", "1,1,-28,28"], ["--input-shape", "four positive sizes"]),
        (["analyze", "--input-shape", "1,a,2,2"], ["--input-shape"]),
        (["analyze", "--fg", "0,0,inf,3"], ["--fg"]),
        (["analyze", "--fg", "1,2,3"], ["--fg"]),
        (["localize", "--overlays", "-1"], ["--overlays"]),
        (["compare", "a.onnx", "--steps", "-5"], ["--steps"]),
    ],
)
def test_numbers_are_checked_before_any_work(args, words, tmp_path):
    result = cli(*args, *(["--out", str(tmp_path / "r")] if args[0] != "check" else []))
    assert_one_error(result, 2, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["analyze", "--bogus"], ["No such option: --bogus"]),
        (["analyze", "--precision", "fp8"], ["--precision", "bf16"]),
        (["analyze", "--memory-format", "nhwc"], ["--memory-format", "channels_last"]),
        (["analyze", "--device", "tpu"], ["--device", "cpu"]),
        (["analyze", "--layout", "chw"], ["--layout", "nhwc"]),
        (["analyze", "--tau", "abc"], ["--tau"]),
        (["analyze", "--steps"], ["--steps"]),
        (["compare"], ["give at least one MODEL"]),
        (["nosuch"], ["No such command"]),
        (["--bogus", "analyze"], ["No such option"]),
        (["analyze", "--fail-if", "cid[0] >> 1"], ["--fail-if", "METRIC[LAYER] OP NUMBER"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, words):
    assert_one_error(cli(*args), 2, *words)


def test_layout_is_case_insensitive_and_choices_reach_the_library(tmp_path):
    # The model does not exist: every option before it was accepted.
    result = cli(
        "analyze",
        str(tmp_path / "none.onnx"),
        "--layout",
        "NHWC",
        "--precision",
        "bf16",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r"),
    )
    assert_one_error(result, 2, "none.onnx")


def test_library_errors_render_their_option_as_a_flag(monkeypatch):
    def fail(*args, **kwargs):
        raise InputError("bad value, use 1,3,8,8", option="input_shape")

    monkeypatch.setattr(layers_command, "open_model", fail)
    assert_one_error(cli("layers", "m.onnx"), 2, "error: --input-shape: bad value")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AuditFailed("audit failed: 1 of 1 rule(s) held"), 1),
        (InputError("x"), 2),
        (NotConverged("3 image/layer results did not converge"), 4),
    ],
)
def test_each_error_class_has_its_exit_code(monkeypatch, error, code):
    monkeypatch.setattr(layers_command, "open_model", lambda *a, **k: (_ for _ in ()).throw(error))
    assert isinstance(error, InfodiscardError) and error.exit_code == code
    assert_one_error(cli("layers", "m.onnx"), code)


def test_an_internal_error_is_one_line_exit_70_and_debug_shows_the_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(layers_command, "open_model", bug)
    result = cli("layers", "m.onnx")
    assert_one_error(result, main.EXIT_INTERNAL, "internal error: ZeroDivisionError: division by zero", "--debug")
    assert main.EXIT_INTERNAL not in (0, 1, 2, 3, 4, 130)
    debug = cli("--debug", "layers", "m.onnx")
    assert debug.code == main.EXIT_INTERNAL and "Traceback" in debug.stderr
    assert debug.lines[-1].startswith("error: internal error: ZeroDivisionError")


def test_ctrl_c_inside_a_command_is_exit_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layers_command, "open_model", interrupted)
    result = cli("layers", "m.onnx")
    assert result.code == 130 and result.lines == ["error: interrupted"]


def test_dependency_warnings_stay_off_stderr_unless_debug(monkeypatch):
    def noisy(*args, **kwargs):
        warnings.warn("Pillow says something", UserWarning, stacklevel=2)
        raise InputError("stop here")

    monkeypatch.setattr(layers_command, "open_model", noisy)
    with warnings.catch_warnings(record=True) as shown:  # what would reach stderr outside pytest
        warnings.simplefilter("always")
        assert cli("layers", "m.onnx").lines == ["error: stop here"]
        assert not shown
        cli("--debug", "layers", "m.onnx")
        assert [str(w.message) for w in shown] == ["Pillow says something"]


def test_markup_in_names_and_paths_is_printed_as_written(markup_model, tmp_path):
    listed = cli("layers", str(markup_model))
    assert listed.code == 0, listed.stderr
    assert MARKUP_NAME in listed.stdout and "[/red]" in str(markup_model)
    checked = cli("check", str(markup_model), "--layer", MARKUP_NAME)
    assert checked.code == 0, checked.stderr
    assert MARKUP_NAME in checked.stdout
    missing = cli("layers", str(markup_model.parent / "[/bold]none.onnx"))
    assert_one_error(missing, 2, "[/bold]none.onnx")
    shown = cli("card", str(markup_model))
    assert shown.code == 0 and json.loads(shown.stdout) == {}
    assert "none: the model has no card" in shown.stderr


def test_check_json_is_built_by_the_library_with_node_name(markup_model):
    result = cli("check", str(markup_model), "--layer", MARKUP_NAME, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] is True and summary["input"] == {"name": "x", "shape": [1, 1, 8, 8]}
    assert [(layer["name"], layer["node_name"], layer["op_type"]) for layer in summary["layers"]] == [
        (MARKUP_NAME, "relu[/]", "Relu")
    ]
    listed = json.loads(cli("layers", str(markup_model), "--json").stdout)
    assert {"node_name", "name", "op_type", "shape", "depth", "index"} == set(listed[0])


def test_version_help_and_quiet():
    from onnx_infodiscard import __version__

    version = cli("--version")
    assert version.code == 0 and version.stdout.strip() == f"infodiscard {__version__}"
    bare = cli()
    assert bare.code == 0 and "analyze" in bare.stdout and "interrupted" in bare.stdout
    assert cli("analyze", "--help").code == 0
    quiet = cli("--quiet", "layers", "m.onnx")
    assert_one_error(quiet, 2, "m.onnx")  # errors still print under --quiet


def test_ru_is_analyze_with_ru_on(monkeypatch, tmp_path):
    from onnx_infodiscard_cli.commands import analyze as analyze_command

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop")

    monkeypatch.setattr(analyze_command, "run_analysis", fake)
    cli("ru", "--out", str(tmp_path / "a"))
    assert seen["ru"] is True and seen["settings"].tau == 0.1
    cli("analyze", "--out", str(tmp_path / "b"), "--steps", "7", "--precision", "bf16")
    assert seen["ru"] is False and seen["settings"].steps == 7 and seen["settings"].precision == "bf16"
