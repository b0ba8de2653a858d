"""Issue #15, case by case, through the real CLI (`main.run`, in process; a subprocess only where the
case is about the process: a broken pipe). Each refusal is exit 2 (or 3 for conversion) with exactly
one `error:` line naming the problem, no traceback, and nothing written: no output folder, no scratch,
no parent folders, the user's files untouched. The closing note of issue #15 maps every case to the
test that covers it (here or elsewhere). Fast paths only: the few runs that reach the solver take one
image, one step, two samples."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import save, small_cnn
from test_cli import Result
from test_cli import cli as run_cli

from onnx_infodiscard.embedded import DEFAULT_MODEL
from onnx_infodiscard_cli import main

IMAGES = sorted((DEFAULT_MODEL.parent / "images").glob("*.png"))
IMAGE = IMAGES[0]
TINY = ["--steps", "1", "--samples", "2", "-l", "-1"]


def cli(*args: str | Path) -> Result:
    return run_cli(*(str(a) for a in args))


def assert_refused(result: Result, code: int, *words: str) -> str:
    """Exit `code`, exactly one `error:` line holding every word, no traceback."""
    assert result.code == code, result
    errors = [line for line in result.lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_with_card(folder: Path, card: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "m.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    (folder / "m.onnx.json").write_text(json.dumps(card))
    return model


def bomb_png(path: Path, width: int = 15000, height: int = 15000) -> Path:
    """A PNG whose header claims width x height grey pixels (Pillow refuses it on open; no pixel is stored)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def external_offset_model(folder: Path, offset: str) -> Path:
    model = small_cnn()
    weight = model.graph.initializer[0]
    (folder / "w.bin").write_bytes(numpy_helper.to_array(weight).tobytes())
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", offset)):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(folder / "ext.onnx"))
    return folder / "ext.onnx"


def two_input_model(folder: Path) -> Path:
    """small_cnn whose Relu reads conv_out + a second graph input `bias`."""
    model = small_cnn()
    model.graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 4, 16, 16]))
    model.graph.node[1].input[0] = "biased"
    model.graph.node.insert(1, helper.make_node("Add", ["conv_out", "bias"], ["biased"], name="add"))
    return save(model, folder / "two.onnx")


def if_model(folder: Path, condition_from_input: bool) -> Path:
    """conv -> relu -> If (then relu_out * 2, else relu_out + 1, both branches read relu_out from the
    outer scope) -> GlobalAveragePool. The If's condition comes from the image or is a constant."""

    def branch(op: str, name: str, value: float) -> onnx.GraphProto:
        const = numpy_helper.from_array(np.array(value, np.float32), f"{name}_c")
        node = helper.make_node(op, ["relu_out", f"{name}_c"], [f"{name}_out"], name=f"{name}_node")
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)], [const]
        )

    model = small_cnn()
    graph = model.graph
    nodes = list(graph.node)[:2]
    if condition_from_input:
        nodes += [
            helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
            helper.make_node("Greater", ["total", "low"], ["cond"], name="gt"),
        ]
        graph.initializer.append(numpy_helper.from_array(np.array(-1e9, np.float32), "low"))
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    nodes += [
        helper.make_node(
            "If",
            ["cond"],
            ["branch_out"],
            name="the_if",
            then_branch=branch("Mul", "then", 2),
            else_branch=branch("Add", "else", 1),
        ),
        helper.make_node("GlobalAveragePool", ["branch_out"], ["pooled"], name="pool"),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    return save(model, folder / f"if_{'input' if condition_from_input else 'constant'}.onnx")


# --------------------------------------------------------------------------------------------- refusals

# Each builder gets (tmp_path, monkeypatch) and returns (arguments, exit code, words of the error line).


def _images_folder_with_old_report(tmp, mp):
    folder = tmp / "digits"
    folder.mkdir()
    for path in IMAGES[:20]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "boxes.csv").write_text("file,x0,y0,x1,y1\n")
    (folder / "report.json").write_text('{"schema_version": 1}')
    return ["analyze", DEFAULT_MODEL, IMAGE, *TINY, "--out", folder], 2, ["--out:", "did not write", "boxes.csv"]


def _out_dot_beside_a_user_file(tmp, mp):
    here = tmp / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    mp.chdir(here)
    return ["analyze", DEFAULT_MODEL, IMAGE, *TINY, "--out", "."], 2, ["--out:", "notes.txt"]


def _card(card: object, *words: str):
    def build(tmp, mp):
        return ["analyze", model_with_card(tmp / "model", card), IMAGE, *TINY, "--out", tmp / "r"], 2, list(words)

    return build


def _card_reading_outside(key: str):
    def build(tmp, mp):
        (tmp / "elsewhere").mkdir()
        model = model_with_card(tmp / "a" / "b", {key: "../../elsewhere"})
        return ["analyze", model, IMAGE, *TINY, "--out", tmp / "r"], 2, [f"'{key}'", "leaves the model's folder"]

    return build


def _image(name: str, make, *words: str):
    def build(tmp, mp):
        path = tmp / name
        make(path)
        return ["analyze", DEFAULT_MODEL, path, *TINY, "--out", tmp / "r"], 2, [name, *words]

    return build


def _model(path_of, *words: str):
    def build(tmp, mp):
        return ["check", path_of(tmp)], 2, list(words)

    return build


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _dangling_out(tmp, mp):
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    return ["analyze", DEFAULT_MODEL, IMAGE, *TINY, "--out", tmp / "dangling"], 2, ["--out:", "does not exist"]


def _cache_is_a_file(extra: list[str], *words: str):
    def build(tmp, mp):
        (tmp / "cachefile").write_text("x")
        mp.setenv("INFODISCARD_CACHE", str(tmp / "cachefile"))
        return ["analyze", DEFAULT_MODEL, IMAGE, *TINY, *extra, "--out", tmp / "r"], 2, list(words)

    return build


def _read_only_cache(tmp, mp):
    cache = tmp / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    mp.setenv("INFODISCARD_CACHE", str(cache))
    return ["analyze", DEFAULT_MODEL, IMAGE, *TINY, "--out", tmp / "r"], 2, ["row cache", "not a writable folder"]


def _boxes(text: str, *words: str):
    def build(tmp, mp):
        (tmp / "boxes.csv").write_text(text.format(image=IMAGE.name))
        args = ["analyze", DEFAULT_MODEL, IMAGE, *TINY, "--fg-boxes", tmp / "boxes.csv", "--out", tmp / "r"]
        return args, 2, list(words)

    return build


def _parents(*extra: str):
    def build(tmp, mp):
        return ["analyze", DEFAULT_MODEL, *extra, *TINY, "--out", tmp / "out-parent" / "b" / "c"], 2, []

    return build


REFUSED = {
    # data loss: a folder the tool did not write is never replaced
    "out-images-folder-with-old-report": _images_folder_with_old_report,
    "out-dot-beside-a-user-file": _out_dot_beside_a_user_file,
    # silently wrong numbers / reads outside the model folder / card fields of the wrong type
    "card-suggested-layers-string": _card(
        {"suggested_layers": "relu"}, "'suggested_layers'", "list of non-empty strings"
    ),
    "card-images-outside": _card_reading_outside("images"),
    "card-train-images-outside": _card_reading_outside("train_images"),
    "card-mean-string": _card({"preprocessing": {"mean": "abc"}}, "'preprocessing.mean'", "m.onnx.json"),
    "card-scale-null": _card({"preprocessing": {"scale": None}}, "'preprocessing.scale'", "got null"),
    "card-a-list": _card(["input", "image"], "must be a JSON object, got a list"),
    "card-preprocessing-string": _card({"preprocessing": "imagenet"}, "'preprocessing' must be an object"),
    "card-input-number": _card({"input": 3}, "'input' must be a non-empty string"),
    # tracebacks that became one line
    "png-decompression-bomb": _image("huge.png", bomb_png, "too large to decode safely", "225000000 pixels"),
    "npy-shape-0-0": _image("empty.npy", lambda p: np.save(p, np.zeros((0, 0), np.float32)), "no pixels"),
    "model-dev-zero": _model(lambda tmp: "/dev/zero", "/dev/zero", "device", "not a regular file"),
    "external-data-offset-not-a-number": _model(
        lambda tmp: external_offset_model(tmp, "abc"), "conv.weight", "malformed external-data entry"
    ),
    "external-data-offset-negative": _model(lambda tmp: external_offset_model(tmp, "-5"), "malformed external-data"),
    "out-dangling-symlink": _dangling_out,
    "cache-is-a-file": _cache_is_a_file([], "row cache", "not a writable folder", "--no-cache:"),
    "decoder-cache-is-a-file": _cache_is_a_file(["--ru", "--no-cache"], "decoder cache", "not a writable folder"),
    "cache-read-only": pytest.param(
        _read_only_cache,
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; nothing to refuse"),
    ),
    # hangs and wrong diagnoses: FIFOs and devices are named as such, never opened
    "model-fifo": _model(lambda tmp: _fifo(tmp / "m.onnx"), "m.onnx", "is a FIFO, not a regular file"),
    "image-fifo": _image("pipe.png", _fifo, "is a FIFO"),
    "image-dev-zero": lambda tmp, mp: (
        ["analyze", DEFAULT_MODEL, "/dev/zero", *TINY, "--out", tmp / "r"],
        2,
        ["/dev/zero", "device or socket"],
    ),
    # leftovers: a boxes CSV that is ambiguous or matches nothing; a failed run creates no parents
    "boxes-two-rows-for-one-file": _boxes(
        "file,x0,y0,x1,y1\n{image},0,0,5,5\n{image},1,1,6,6\n", "has two boxes, on lines 2 and 3"
    ),
    "boxes-no-row-matches": _boxes(
        "file,x0,y0,x1,y1\nother.png,0,0,5,5\n", "--fg-boxes:", "none of the 1 images", "'other.png'"
    ),
    "boxes-inf": _boxes("file,x0,y0,x1,y1\n{image},0,0,inf,5\n", "boxes.csv:2", "finite numbers"),
    "failed-run-missing-image": _parents("/nonexistent/x.png"),
    "failed-run-unknown-layer": _parents(str(IMAGE), "-l", "no_such_layer"),
    # accepted when it should be refused
    "npy-complex": _image("c.npy", lambda p: np.save(p, np.zeros((28, 28), np.complex64)), "complex values"),
    "second-input-unfed": lambda tmp, mp: (
        ["check", two_input_model(tmp), "--input", "x", "--layer", "relu_out"],
        2,
        ["'relu_out'", "graph input 'bias'", "node 'add'", "feeds only the image input 'x'"],
    ),
    "second-input-unnamed-shows-the-real-flag": lambda tmp, mp: (
        ["check", two_input_model(tmp)],
        2,
        ["error: --input: the graph has 2 inputs (x, bias)"],
    ),
    # wrong diagnosis: a layer behind an If is not constant; the If is what cannot be converted
    "layer-behind-if-input-condition": lambda tmp, mp: (
        ["check", if_model(tmp, True), "--layer", "branch_out"],
        3,
        ["op If", "node 'the_if'", "no onnx2torch converter"],
    ),
    "layer-behind-if-constant-condition": lambda tmp, mp: (
        ["check", if_model(tmp, False), "--layer", "pooled"],
        3,
        ["op If", "node 'the_if'"],
    ),
}


@pytest.mark.parametrize("build", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_in_one_line_and_nothing_written(build, tmp_path, monkeypatch):
    args, code, words = build(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    line = assert_refused(cli(*args), code, *words)
    assert "constant with respect to the input" not in line
    assert snapshot(tmp_path) == before, "a refused run changed files"  # the user's files, the inputs
    leftovers = [
        p for p in tmp_path.rglob("*") if p.name in ("r", "out-parent") or ".tmp-" in p.name or "lock" in p.name
    ]
    assert leftovers == [], leftovers  # no output, no scratch, no lock, no parent folders


# --------------------------------------------------------------------------------------------- accepted


def test_a_layer_before_an_if_converts_and_the_if_is_a_layer_the_input_reaches(tmp_path):
    model = if_model(tmp_path, True)
    listed = json.loads(cli("layers", model, "--json").stdout)
    assert {"branch_out", "pooled"} <= {layer["name"] for layer in listed}
    assert cli("check", model, "--layer", "relu_out").code == 0
    auto = cli("check", model)  # auto stops before the unconvertible If, and says why it kept one layer
    assert auto.code == 0 and any(line.startswith("note: auto kept 1 layer") for line in auto.lines), auto.stderr
    constant = if_model(tmp_path, False)  # no tensor outside the branches links the input to the If
    assert "branch_out" in {layer["name"] for layer in json.loads(cli("layers", constant, "--json").stdout)}


def test_a_boxes_csv_with_a_byte_order_mark_is_read(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_bytes(f"\ufefffile,x0,y0,x1,y1\n{IMAGE.name},4,4,24,24\n".encode())
    result = cli(
        "analyze", DEFAULT_MODEL, IMAGE, *TINY[:4], "-l", "no_such", "--fg-boxes", csv, "--out", tmp_path / "r"
    )
    assert_refused(result, 2, "unknown layer 'no_such'")  # the CSV was read: the run went on to the layers


def test_out_dot_in_an_empty_folder_writes_there_without_dependency_warnings(tmp_path, monkeypatch):
    """The issue's `--out .` in an empty folder: the folder stays (same inode) and holds the report;
    stderr holds notes only, no Pillow/matplotlib/torch warning."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = os.stat(".").st_ino
    result = cli("analyze", DEFAULT_MODEL, IMAGE, *TINY, "--out", ".", "--json")
    assert result.code in (0, 4), result.stderr
    assert os.stat(".").st_ino == inode and (here / "report.json").is_file()
    assert json.loads(result.stdout)["images"] == 1
    assert not [line for line in result.lines if "warn" in line.lower() or "error" in line.lower()], result.stderr


def near_zero_sigmoid(folder: Path) -> Path:
    """x -> x - 20 -> Sigmoid: a map of about 2e-9 everywhere, where only an absolute criterion means anything."""
    nodes = [
        helper.make_node("Sub", ["x", "twenty"], ["shifted"], name="shift"),
        helper.make_node("Sigmoid", ["shifted"], ["gate"], name="sigmoid"),
        helper.make_node("GlobalAveragePool", ["gate"], ["y"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "near_zero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])],
        [numpy_helper.from_array(np.array(20.0, np.float32), "twenty")],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "sigmoid.onnx")


def test_check_says_which_criterion_passed(tmp_path):
    model = near_zero_sigmoid(tmp_path)
    summary = json.loads(cli("check", model, "--layer", "gate", "--json").stdout)
    (layer,) = summary["layers"]
    assert summary["passed"] and layer["criterion"] == "absolute"
    table = cli("check", model, "--layer", "gate")
    assert table.code == 0 and "yes (absolute)" in table.stdout, table.stdout


# --------------------------------------------------------------------------------------------- the process


def test_a_system_exit_from_a_dependency_is_an_internal_error_not_an_audit(monkeypatch):
    from onnx_infodiscard_cli.commands import layers as layers_command

    def exits(*args, **kwargs):
        sys.exit(1)  # what a dependency's own CLI helper may do; 1 would read as "an audit rule held"

    monkeypatch.setattr(layers_command, "open_model", exits)
    assert_refused(cli("layers", "m.onnx"), main.EXIT_INTERNAL, "internal error: SystemExit")


def test_a_broken_pipe_exits_141_quietly():
    """`infodiscard layers M --json | head -c 10` once head has gone: exit 141 (as a shell reports a
    writer SIGPIPE ended), not 1 (an audit rule held), and nothing on stderr, not even the
    interpreter's `Exception ignored` at its last flush."""
    read, write = os.pipe()
    os.close(read)  # the reader has left before the first byte
    try:
        result = subprocess.run(
            [sys.executable, "-m", "onnx_infodiscard_cli.main", "layers", str(DEFAULT_MODEL), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    finally:
        os.close(write)
    assert result.returncode == main.EXIT_BROKEN_PIPE == 141, result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr and "Exception" not in result.stderr


def test_a_broken_pipe_under_a_rich_table_exits_141_quietly():
    """The table goes through Rich, whose own handler would exit 1."""
    read, write = os.pipe()
    os.close(read)
    pipe = os.fdopen(write, "w")
    err = io.StringIO()
    try:
        with redirect_stdout(pipe), redirect_stderr(err):
            code = main.run(["--quiet", "layers", str(DEFAULT_MODEL)])
    finally:
        try:
            pipe.close()
        except BrokenPipeError:  # what is left in its buffer has nowhere to go
            pass
    assert code == 141 and err.getvalue() == ""
    assert cli("--version").stdout.startswith("infodiscard "), "the next run in this process prints again"
