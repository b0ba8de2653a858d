"""Model cards in the ONNX metadata: `infodiscard card` shows them, writes them into a copy, and an
analysis of the copy alone (no sidecar, no flags) uses them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnx_infodiscard.card import (
    default_copy, effective_card, embedded_card, parse_assignment, updated, validate, with_card, write_card,
)
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.preprocess import METADATA_KEY, read_card

MODELS = Path(__file__).resolve().parent.parent / "models"
DYNAMO = MODELS / "torch_dynamo_digits" / "torch_dynamo_digits.onnx"


def infodiscard(*args: str) -> subprocess.CompletedProcess:
    """`infodiscard ...` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "onnx_infodiscard_cli.main", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def bare(tmp_path) -> Path:
    """The dynamo model alone in a folder, its embedded card removed: a freshly exported model."""
    proto = onnx.load(str(DYNAMO))
    del proto.metadata_props[:]
    path = tmp_path / "exported.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("text, key, value", [
    ("layout=nhwc", "layout", "nhwc"),
    ("scale=255", "preprocessing.scale", 255),
    ("preprocessing.bgr=true", "preprocessing.bgr", True),
    ("mean=0.1307", "preprocessing.mean", [0.1307]),
    ("std=0.229,0.224,0.225", "preprocessing.std", [0.229, 0.224, 0.225]),
    ("suggested_layers=relu,relu_2", "suggested_layers", ["relu", "relu_2"]),
    ('suggested_layers=["a,b"]', "suggested_layers", ["a,b"]),
    ("classes=zero, one", "classes", ["zero", "one"]),
    ("note=any text: even = signs", "note", "any text: even = signs"),
])
def test_assignments_parse(text, key, value):
    assert parse_assignment(text) == (key, value)


def test_bad_assignments_and_unsets_are_input_errors():
    """(Through the CLI these are one `error:` line with exit code 2, as the two cases below show.)"""
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_assignment("layout")
    with pytest.raises(InputError, match="takes numbers"):
        parse_assignment("mean=a,b")
    with pytest.raises(InputError, match=r"--unset 'preprocessing.scale': the card has no such key"):
        updated({"preprocessing": {}}, unsets=["scale"])
    with pytest.raises(InputError, match="'layout' holds a str"):
        updated({"layout": "nchw"}, sets=["layout.x=1"])


def test_updated_reaches_into_objects_and_leaves_the_original():
    card = {"preprocessing": {"scale": 1.0, "mean": [0.5]}, "layout": "nchw"}
    new = updated(card, ["scale=255", "layout=nhwc", "input=image"], ["mean"])
    assert new == {"preprocessing": {"scale": 255}, "layout": "nhwc", "input": "image"}
    assert card["preprocessing"] == {"scale": 1.0, "mean": [0.5]}


def test_validation_names_the_fix(bare):
    proto = onnx.load(str(bare))
    validate({"input": "image", "suggested_layers": ["relu", "-1", "relu*", "auto"]}, proto)
    with pytest.raises(InputError, match=r"card input 'imgae'.*did you mean 'image'"):
        validate({"input": "imgae"}, proto)
    with pytest.raises(InputError, match=r"suggested layer 'relu_9'.*did you mean"):
        validate({"suggested_layers": ["relu_9"]}, proto)
    with pytest.raises(InputError, match="layout 'hwc'"):
        validate({"layout": "hwc"}, proto)
    with pytest.raises(InputError, match="unknown preprocessing fields"):
        validate({"preprocessing": {"scael": 2}}, proto)


def test_with_card_keeps_other_metadata_and_replaces_its_own():
    proto = onnx.load(str(DYNAMO))
    proto.metadata_props.add(key="author", value="me")
    first = with_card(proto, {"layout": "nchw"})
    second = with_card(first, {"layout": "nhwc"})
    assert [p.key for p in second.metadata_props].count(METADATA_KEY) == 1
    assert {p.key: p.value for p in second.metadata_props}["author"] == "me"
    assert embedded_card(second) == {"layout": "nhwc"}
    assert embedded_card(proto) is not None and proto is not first  # the input proto is untouched


def test_card_cli_round_trip(bare):
    """Set a card on an exported model; the copy carries it, the input is untouched; --show reads it."""
    before = bare.read_bytes()
    want = json.loads((DYNAMO.parent / "torch_dynamo_digits.onnx.json").read_text())
    result = infodiscard("card", str(bare), "--set", "input=image", "--set", "layout=nchw",
                         "--set", "mean=0.1307", "--set", "std=0.3081", "--set", "suggested_layers=relu,relu_2",
                         "--set", "test_accuracy=0.975", "--show")
    assert result.returncode == 0, result.stderr
    copy = default_copy(bare)
    assert copy.name == "exported.card.onnx" and copy.is_file()
    assert bare.read_bytes() == before
    card = json.loads(result.stdout)
    assert card == {"input": "image", "layout": "nchw", "preprocessing": {"mean": [0.1307], "std": [0.3081]},
                    "suggested_layers": ["relu", "relu_2"], "test_accuracy": 0.975}
    assert read_card(copy, onnx.load(str(copy))) == card
    assert card["preprocessing"]["mean"] == want["preprocessing"]["mean"]
    shown = infodiscard("card", str(copy))
    assert shown.returncode == 0 and json.loads(shown.stdout) == card
    assert "embedded in the model" in shown.stderr
    # Weights and graph are those of the input.
    original, written = onnx.load(str(bare)), onnx.load(str(copy))
    assert original.graph.SerializeToString() == written.graph.SerializeToString()


def test_card_cli_replaces_the_input_only_when_named(bare, tmp_path):
    result = infodiscard("card", str(bare), "--set", "layout=nchw", "--out", str(bare))
    assert result.returncode == 0, result.stderr
    assert embedded_card(onnx.load(str(bare))) == {"layout": "nchw"}
    assert not default_copy(bare).exists()
    unset = infodiscard("card", str(bare), "--unset", "layout", "--out", str(tmp_path / "other.onnx"))
    assert unset.returncode == 0 and embedded_card(onnx.load(str(tmp_path / "other.onnx"))) == {}


@pytest.mark.parametrize("args, words", [
    (["--set", "input=imgae"], ["error: card input 'imgae'", "did you mean 'image'"]),
    (["--set", "layout=nchw", "--out", "/nonexistent-folder/x.onnx"], ["does not exist"]),
])
def test_card_cli_errors_are_one_line_exit_2(bare, args, words):
    result = infodiscard("card", str(bare), *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not default_copy(bare).exists()


def test_shipped_cards_show_and_sidecar_wins(tmp_path):
    for name in ("keras_digits", "torch_dynamo_digits", "torchscript_digits"):
        model = MODELS / name / f"{name}.onnx"
        found = effective_card(model)
        assert found.source == "sidecar" and found.shadowed
        assert found.card == embedded_card(onnx.load(str(model)))  # the two copies agree
    copy = tmp_path / "m.onnx"
    shutil.copy(DYNAMO, copy)
    copy.with_name("m.onnx.json").write_text(json.dumps({"layout": "nchw"}))
    found = effective_card(copy)
    assert found.source == "sidecar" and found.card == {"layout": "nchw"} and found.shadowed


def test_write_card_needs_a_valid_card(bare, tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        write_card(bare, {}, tmp_path)
    out = write_card(bare, {"layout": "nchw"}, tmp_path / "ok.onnx")
    assert out.is_file() and not list(tmp_path.glob(".ok.onnx.tmp-*"))


def test_an_exported_model_with_an_embedded_card_needs_no_flags(bare):
    """analyze() on the bare copy alone takes preprocessing, layers and input from the metadata card."""
    from onnx_infodiscard.analysis import analyze
    from onnx_infodiscard.perturb import SolverSettings

    write_card(bare, {"input": "image", "preprocessing": {"mean": [0.1307], "std": [0.3081]},
                      "suggested_layers": ["relu_2"]}, bare)
    image = sorted((MODELS / "digits_cnn" / "images").glob("*.png"))[0]
    report = analyze(bare, [image], settings=SolverSettings(steps=10, samples=4), device="cpu")
    assert report.preprocessing.mean == (0.1307,) and report.preprocessing.source == "model card"
    assert [layer.name for layer in report.layers] == ["relu_2"]
