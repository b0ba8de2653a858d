"""Bad input through `infodiscard check`: each gives one line `error: ...` naming the problem, exit
code 2 (bad input) or 3 (conversion failure), and never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import save, small_cnn

CLI = [sys.executable, "-m", "onnx_infodiscard_cli.main"]


def run_check(model: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "check", str(model), *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, nothing but one `error:` line on stderr, containing every fragment."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


@pytest.fixture
def good_bytes() -> bytes:
    return small_cnn().SerializeToString()


def test_good_model_passes(tmp_path):
    """The base graph of the broken ones below is fine: each failure is the one change made."""
    result = run_check(save(small_cnn(), tmp_path / "ok.onnx"), "--json")
    assert result.returncode == 0, result.stderr


def test_missing_file(tmp_path):
    assert_one_line_error(run_check(tmp_path / "nope.onnx"), 2, "no such file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_one_line_error(run_check(path), 2, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_one_line_error(run_check(path), 2, "not an onnx")


def test_truncated_protobuf(tmp_path, good_bytes):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good_bytes[: len(good_bytes) * 2 // 3])
    assert_one_line_error(run_check(path), 2, "truncated")


def test_text_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("This is not a model.\nIt is a text file with a few lines.\n")
    assert_one_line_error(run_check(path), 2, "not an onnx")


def test_graph_with_no_input(tmp_path):
    weight = numpy_helper.from_array(np.ones((1, 3, 4, 4), np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "no_input",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [weight],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    assert_one_line_error(run_check(path), 2, "no input")


def test_integer_image_input(tmp_path):
    cast = helper.make_node("Cast", ["x"], ["x_float"], name="cast", to=TensorProto.FLOAT)
    model = small_cnn([cast], input_type=TensorProto.UINT8, first="x_float")
    assert_one_line_error(run_check(save(model, tmp_path / "m.onnx")), 2, "UINT8", "not float")


def _with_external_weight(folder: Path, location: str, write: bool) -> Path:
    """folder/model/m.onnx: small_cnn with its conv weight in the external file `location`
    (relative to folder/model)."""
    model = small_cnn()
    weight = model.graph.initializer[0]
    if write:
        target = (folder / "model" / location).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(weight.raw_data or numpy_helper.to_array(weight).tobytes())
    weight.ClearField("raw_data")
    del weight.float_data[:]
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    path = folder / "model" / "m.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_external_data_beside_the_model_loads(tmp_path):
    result = run_check(_with_external_weight(tmp_path, "weights.bin", write=True), "--json")
    assert result.returncode == 0, result.stderr


def test_external_data_escaping_the_model_folder(tmp_path):
    path = _with_external_weight(tmp_path, "../outside.bin", write=True)
    assert (tmp_path / "outside.bin").is_file()
    assert_one_line_error(run_check(path), 2, "conv.weight", "outside the model's folder")


def test_missing_external_data_file(tmp_path):
    path = _with_external_weight(tmp_path, "weights.bin", write=False)
    assert_one_line_error(run_check(path), 2, "weights.bin", "missing")


def test_unknown_custom_domain_op(tmp_path):
    custom = helper.make_node("FancyNorm", ["x"], ["x_norm"], name="fancy", domain="com.example")
    model = small_cnn([custom], first="x_norm")
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert_one_line_error(run_check(save(model, tmp_path / "m.onnx")), 3, "FancyNorm", "com.example", "'fancy'")


def test_opset_from_the_future(tmp_path):
    model = small_cnn()
    model.opset_import[0].version = 99
    assert_one_line_error(run_check(save(model, tmp_path / "m.onnx", check=False)), 2, "opset 99")


def test_graph_with_a_cycle(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b_out"], ["a_out"], name="a"),
        helper.make_node("Relu", ["a_out"], ["b_out"], name="b"),
    ]
    graph = helper.make_graph(
        nodes,
        "cycle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert_one_line_error(run_check(save(model, tmp_path / "m.onnx", check=False)), 2, "cycle", "'a'", "'b'")


def test_unsorted_acyclic_graph_is_sorted_not_refused(tmp_path):
    """Nodes out of order but without a cycle: the loader sorts them instead of failing."""
    model = small_cnn()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    result = run_check(save(model, tmp_path / "m.onnx", check=False), "--json")
    assert result.returncode == 0, result.stderr


def test_nan_weights(tmp_path):
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    weight[1, 2, 0, :] = np.nan
    path = save(small_cnn(conv_weight=weight), tmp_path / "m.onnx")
    assert_one_line_error(run_check(path), 2, "conv.weight", "3 NaN")


def test_absurd_input_shape_is_refused_with_the_estimate(tmp_path):
    model = small_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    line = assert_one_line_error(
        run_check(save(model, tmp_path / "m.onnx"), "--input-shape", "1,3,100000,100000"), 2, "GiB"
    )
    assert "input-shape:" in line.replace("_", "-")  # the error names the option (as a flag once the CLI renders it)
    assert "needs about 112 GiB" in line  # the input alone: 3 x 1e10 float32 values


def test_unknown_layer_name_lists_three_close_names(tmp_path):
    line = assert_one_line_error(
        run_check(save(small_cnn(), tmp_path / "m.onnx"), "--layer", "relu_outt"), 2, "unknown layer"
    )
    suggestions = line.split("did you mean", 1)[1]
    assert suggestions.count("'") == 6 and "'relu_out'" in suggestions


def test_layer_constant_with_respect_to_the_input(tmp_path):
    """`scaled` is computed from weights only: folded into a weight, never reached by the image."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Mul", ["w", "half"], ["scaled"], name="scale_weights"),
        helper.make_node("Conv", ["x", "scaled"], ["conv_out"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv_out"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    assert_one_line_error(run_check(path, "--layer", "scaled"), 2, "'scaled'", "constant with respect to the input")


def test_layer_behind_argmax(tmp_path):
    nodes = [
        helper.make_node("ArgMax", ["relu_out"], ["best"], name="argmax", axis=1, keepdims=1),
        helper.make_node("Cast", ["best"], ["best_float"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["best_float", "relu_out"], ["masked"], name="mask"),
    ]
    model = small_cnn()
    model.graph.node.extend(nodes)
    path = save(model, tmp_path / "m.onnx")
    # `masked` also reads relu_out, so a gradient reaches it; `best_float` only through ArgMax.
    assert run_check(path, "--layer", "masked").returncode == 0
    assert_one_line_error(run_check(path, "--layer", "best_float"), 2, "'best_float'", "ArgMax", "'argmax'")
