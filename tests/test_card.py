"""Model cards in the ONNX metadata: `infodiscard card` shows them, writes them into a copy, and an
analysis of the copy alone (no sidecar, no flags) uses them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnx_infodiscard.card import ModelCard, embedded_card, sidecar_path, with_card
from onnx_infodiscard.card_edit import default_copy, effective_card, parse_assignment, updated, validate, write_card
from onnx_infodiscard.errors import InputError
from onnx_infodiscard.preprocess import METADATA_KEY, read_card

MODELS = Path(__file__).resolve().parent.parent / "models"
DYNAMO = MODELS / "torch_dynamo_digits" / "torch_dynamo_digits.onnx"


def infodiscard(*args: str) -> subprocess.CompletedProcess:
    """`infodiscard ...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "onnx_infodiscard_cli.main", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def bare(tmp_path) -> Path:
    """The dynamo model alone in a folder, its embedded card removed: a freshly exported model."""
    proto = onnx.load(str(DYNAMO))
    del proto.metadata_props[:]
    path = tmp_path / "exported.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("layout=nhwc", "layout", "nhwc"),
        ("scale=255", "preprocessing.scale", 255),
        ("preprocessing.bgr=true", "preprocessing.bgr", True),
        ("mean=0.1307", "preprocessing.mean", [0.1307]),
        ("std=0.229,0.224,0.225", "preprocessing.std", [0.229, 0.224, 0.225]),
        ("suggested_layers=relu,relu_2", "suggested_layers", ["relu", "relu_2"]),
        ('suggested_layers=["a,b"]', "suggested_layers", ["a,b"]),
        ("classes=zero, one", "classes", ["zero", "one"]),
        ("note=any text: even = signs", "note", "any text: even = signs"),
    ],
)
def test_assignments_parse(text, key, value):
    assert parse_assignment(text) == (key, value)


def test_bad_assignments_and_unsets_are_input_errors():
    """(Through the CLI these are one `error:` line with exit code 2, as the two cases below show.)"""
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_assignment("layout")
    with pytest.raises(InputError, match="takes numbers"):
        parse_assignment("mean=a,b")
    with pytest.raises(InputError, match=r"'preprocessing.scale': the card has no such key") as err:
        updated({"preprocessing": {}}, unsets=["scale"])
    assert err.value.rendered().startswith("--unset: ")
    with pytest.raises(InputError, match="'layout' holds a str") as err:
        updated({"layout": "nchw"}, sets=["layout.x=1"])
    assert err.value.option == "set"


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
    with pytest.raises(InputError, match="card field 'layout' must be 'nchw' or 'nhwc', got 'hwc'"):
        validate({"layout": "hwc"}, proto)
    with pytest.raises(
        InputError, match="card field 'preprocessing.scael' is not a known field; did you mean 'preprocessing.scale'"
    ):
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
    result = infodiscard(
        "card",
        str(bare),
        "--set",
        "input=image",
        "--set",
        "layout=nchw",
        "--set",
        "mean=0.1307",
        "--set",
        "std=0.3081",
        "--set",
        "suggested_layers=relu,relu_2",
        "--set",
        "test_accuracy=0.975",
        "--show",
    )
    assert result.returncode == 0, result.stderr
    copy = default_copy(bare)
    assert copy.name == "exported.card.onnx" and copy.is_file()
    assert bare.read_bytes() == before
    card = json.loads(result.stdout)
    assert card == {
        "input": "image",
        "layout": "nchw",
        "preprocessing": {"mean": [0.1307], "std": [0.3081]},
        "suggested_layers": ["relu", "relu_2"],
        "test_accuracy": 0.975,
    }
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


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "input=imgae"], ["error: card input 'imgae'", "did you mean 'image'"]),
        (["--set", "layout=nchw", "--out", "/nonexistent-folder/x.onnx"], ["does not exist"]),
    ],
)
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
    with pytest.raises(InputError, match="is a folder") as err:
        write_card(bare, {}, tmp_path)
    assert err.value.option == "out"
    out = write_card(bare, {"layout": "nchw"}, tmp_path / "ok.onnx")
    assert out.is_file() and not list(tmp_path.glob(".ok.onnx.tmp-*"))


def test_an_exported_model_with_an_embedded_card_needs_no_flags(bare):
    """analyze() on the bare copy alone takes preprocessing, layers and input from the metadata card."""
    from onnx_infodiscard.analysis import analyze
    from onnx_infodiscard.perturb import SolverSettings

    write_card(
        bare,
        {"input": "image", "preprocessing": {"mean": [0.1307], "std": [0.3081]}, "suggested_layers": ["relu_2"]},
        bare,
    )
    image = sorted((MODELS / "digits_cnn" / "images").glob("*.png"))[0]
    report = analyze(bare, [image], settings=SolverSettings(steps=10, samples=4), device="cpu")
    assert report.preprocessing.mean == (0.1307,) and report.preprocessing.source == "model card"
    assert [layer.name for layer in report.layers] == ["relu_2"]


# ---------------------------------------------------------------------------------------------
# ModelCard: one schema, errors that name the field, paths that stay inside, symlinks


SHIPPED_NAMES = ("digits_cnn", "cluttered_digits", "keras_digits", "torch_dynamo_digits", "torchscript_digits")


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_cards_read_unchanged(name):
    """The on-disk format is the one the shipped cards use: every one reads, typed, and writes back equal."""
    model = MODELS / name / f"{name}.onnx"
    card = ModelCard.for_model(model, onnx.load(str(model)))
    on_disk = json.loads(sidecar_path(model).read_text())
    assert card.source == "sidecar" and card.to_json() == on_disk
    assert isinstance(card.suggested_layers, tuple) and card.suggested_layers == tuple(on_disk["suggested_layers"])
    assert card.preprocessing.mean == tuple(on_disk["preprocessing"]["mean"])
    assert card.image_folder(model, "images").is_dir() and card.image_folder(model, "foreground_boxes").is_file()
    embedded = embedded_card(onnx.load(str(model)))
    assert embedded is None or ModelCard.from_json(embedded) == card  # the embedded copy agrees


@pytest.mark.parametrize(
    "card, words",
    [
        (
            {"preprocessing": {"mean": "abc"}},
            "card field 'preprocessing.mean' must be a list of finite numbers, got 'abc'",
        ),
        ({"preprocessing": {"scale": None}}, "card field 'preprocessing.scale' must be a finite number > 0, got null"),
        ({"preprocessing": {"std": [0.3, 0]}}, "card field 'preprocessing.std' must be a list of finite numbers > 0"),
        (["input", "image"], "the model card must be a JSON object, got a list"),
        ({"preprocessing": "imagenet"}, "card field 'preprocessing' must be an object"),
        ({"input": 3}, "card field 'input' must be a non-empty string, got 3"),
        ({"suggested_layers": "relu"}, "card field 'suggested_layers' must be a list of non-empty strings, got 'relu'"),
        ({"layout": ["nchw"]}, "card field 'layout' must be 'nchw' or 'nhwc'"),
        ({"test_accuracy": 97.5}, "card field 'test_accuracy' must be a number in [0, 1], got 97.5"),
        ({"n_test": True}, "card field 'n_test' must be a whole number"),
        ({"images": "/etc"}, "card field 'images' must be a relative path"),
        ({"imgaes": "images"}, "card field 'imgaes' is not a known field; did you mean 'images'"),
        ({"scale": 255}, "card field 'scale' is not a known field; did you mean 'preprocessing.scale'"),
        ({"preprocessing": {"preset": "imagenett"}}, "card field 'preprocessing.preset' must be one of the presets"),
    ],
)
def test_a_wrong_field_is_one_error_naming_it(card, words):
    with pytest.raises(InputError) as err:
        ModelCard.from_json(card, "sidecar m.onnx.json")
    message = str(err.value)
    assert words in message and "\n" not in message and message.endswith("(sidecar m.onnx.json)"), message
    assert err.value.option is None


def test_resolve_preprocessing_takes_the_typed_card_and_its_preset():
    from onnx_infodiscard.preprocess import resolve_preprocessing

    card = ModelCard.from_json({"layout": "NHWC", "preprocessing": {"preset": "imagenet", "bgr": True}})
    spec = resolve_preprocessing(card, (1, 224, 224, 3))
    assert spec.mean == (0.485, 0.456, 0.406) and spec.bgr and spec.layout == "nhwc" and spec.source == "model card"
    assert resolve_preprocessing({"preprocessing": {"scale": 255}}, (1, 1, 28, 28)).scale == 255.0  # JSON still works


def _model_with_sidecar(folder: Path, card: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "m.onnx"
    shutil.copy(DYNAMO, model)
    sidecar_path(model).write_text(json.dumps(card))
    return model


@pytest.mark.parametrize(
    "sets, words",
    [
        (["mean=abc"], "takes numbers"),
        (["scale=null"], "card field 'preprocessing.scale' must be a finite number > 0, got null"),
        (["input=3"], "card field 'input' must be a non-empty string, got 3"),
        (['suggested_layers="relu"'], "card field 'suggested_layers' must be a list of non-empty strings"),
        (["preprocessing=imagenet"], "card field 'preprocessing' must be an object"),
        (["std=nan"], "card field 'preprocessing.std' must be a list of finite numbers > 0"),
    ],
)
def test_card_set_refuses_a_wrong_type(sets, words):
    """What `card --set` calls: the card after the change is validated, the error names the field."""
    with pytest.raises(InputError, match=re.escape(words)):
        updated({"input": "image"}, sets)


def test_card_set_refuses_a_wrong_type_in_one_line(bare):
    result = infodiscard("card", str(bare), "--set", "scale=null")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error:") and "card field 'preprocessing.scale' must be a finite number" in lines[0]
    assert not default_copy(bare).exists()


def test_card_cli_shows_and_fixes_a_broken_sidecar(tmp_path):
    """A broken card can still be shown and repaired with --set (it is validated after the change)."""
    model = _model_with_sidecar(tmp_path, {"input": "image", "preprocessing": {"mean": "abc"}})
    shown = infodiscard("card", str(model))
    assert shown.returncode == 0 and json.loads(shown.stdout)["preprocessing"]["mean"] == "abc"
    fixed = infodiscard("card", str(model), "--set", "mean=0.1307", "--out", str(tmp_path / "fixed.onnx"))
    assert fixed.returncode == 0, fixed.stderr
    assert ModelCard.from_json(embedded_card(onnx.load(str(tmp_path / "fixed.onnx")))).preprocessing.mean == (0.1307,)


def test_analyze_with_a_broken_sidecar_is_one_line_exit_2(tmp_path):
    model = _model_with_sidecar(tmp_path, ["not", "an", "object"])
    result = infodiscard("analyze", str(model), "--out", str(tmp_path / "r"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "the model card must be a JSON object, got a list" in lines[0] and "m.onnx.json" in lines[0]


@pytest.mark.parametrize("key", ["images", "train_images", "foreground_boxes"])
def test_card_paths_stay_inside_the_model_folder(tmp_path, key):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model = _model_with_sidecar(tmp_path / "a" / "b", {key: "../../elsewhere"})
    with pytest.raises(InputError, match=f"card field '{key}' is '../../elsewhere', which leaves the model's folder"):
        ModelCard.for_model(model, onnx.load(str(model)))
    (model.parent / "inside").mkdir()
    card = ModelCard.from_json({key: "inside"}, folder=model.parent)
    assert card.image_folder(model, key) == model.parent / "inside"


def test_a_symlink_inside_the_folder_cannot_lead_outside(tmp_path):
    (tmp_path / "secret").mkdir()
    model = _model_with_sidecar(tmp_path / "m", {"images": "photos"})
    (model.parent / "photos").symlink_to(tmp_path / "secret")
    with pytest.raises(InputError, match="leaves the model's folder"):
        ModelCard.for_model(model, onnx.load(str(model)))


def test_analyze_refuses_a_card_reading_outside(tmp_path):
    """The case of the issue: a card whose `images` climbs out makes analyze stop before reading anything."""
    shutil.copytree(MODELS / "digits_cnn" / "images", tmp_path / "elsewhere")
    model = _model_with_sidecar(tmp_path / "x" / "y", {"images": "../../elsewhere"})
    result = infodiscard("analyze", str(model), "--steps", "1", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "leaves the model's folder" in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def test_a_symlinked_model_keeps_its_card_and_the_links_sidecar_wins(tmp_path):
    real = _model_with_sidecar(tmp_path / "real", {"input": "image", "images": "imgs"})
    (real.parent / "imgs").mkdir()
    link = tmp_path / "link" / "model.onnx"
    link.parent.mkdir()
    link.symlink_to(real)
    card = ModelCard.for_model(link, onnx.load(str(link)))
    assert card.input == "image" and card.location == sidecar_path(real)
    assert card.image_folder(link, "images") == real.parent / "imgs"  # relative to the card's folder
    assert effective_card(link).source == "sidecar"
    sidecar_path(link).write_text(json.dumps({"input": "pixels"}))
    assert ModelCard.for_model(link, onnx.load(str(link))).input == "pixels"
    assert effective_card(link).card == {"input": "pixels"}


def test_sidecar_with_a_byte_order_mark_reads_and_a_repeated_key_does_not(tmp_path):
    model = _model_with_sidecar(tmp_path, {})
    sidecar_path(model).write_bytes(b"\xef\xbb\xbf" + json.dumps({"layout": "nchw"}).encode())
    assert ModelCard.for_model(model, onnx.load(str(model))).layout == "nchw"
    sidecar_path(model).write_text('{"layout": "nchw", "layout": "nhwc"}')
    with pytest.raises(InputError, match="gives 'layout' twice"):
        ModelCard.for_model(model, onnx.load(str(model)))


def test_a_fifo_sidecar_is_refused_not_waited_on(tmp_path):
    model = _model_with_sidecar(tmp_path, {})
    sidecar = sidecar_path(model)
    sidecar.unlink()
    os.mkfifo(sidecar)
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        ModelCard.for_model(model, onnx.load(str(model)))


def test_with_updates_validates_and_keeps_the_original():
    card = ModelCard.from_json({"input": "image", "preprocessing": {"mean": [0.5]}})
    new = card.with_updates(["scale=255", "suggested_layers=a,b"], ["mean"])
    assert new.preprocessing.scale == 255.0 and new.preprocessing.mean is None and new.suggested_layers == ("a", "b")
    assert card.preprocessing.mean == (0.5,)
    with pytest.raises(InputError, match="card field 'input' must be a non-empty string"):
        card.with_updates(["input=[1]"])
    assert ModelCard().to_json() == {} and ModelCard().is_empty()


def test_any_json_is_a_card_or_one_input_error():
    """Property: whatever JSON a card holds, reading it gives a ModelCard that writes back equal, or
    an InputError of one line — never another exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=8)
    keys = st.sampled_from(
        [
            "input",
            "layout",
            "preprocessing",
            "scale",
            "mean",
            "std",
            "bgr",
            "preset",
            "classes",
            "suggested_layers",
            "images",
            "test_accuracy",
            "n_test",
            "note",
            "x",
        ]
    )
    values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6
    )

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.dictionaries(keys, values, max_size=5) | values)
    def check(data):
        try:
            card = ModelCard.from_json(data)
        except InputError as err:
            assert "\n" not in str(err)
            return
        assert ModelCard.from_json(card.to_json()) == card

    check()


def test_analyze_through_a_symlink_uses_the_card_beside_the_real_file(tmp_path):
    """The issue's case: the model given through a link used to run with raw 0..1 preprocessing."""
    from onnx_infodiscard.analysis import analyze
    from onnx_infodiscard.perturb import SolverSettings

    real = _model_with_sidecar(
        tmp_path / "real",
        {"input": "image", "suggested_layers": ["relu_2"], "preprocessing": {"mean": [0.1307], "std": [0.3081]}},
    )
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    image = sorted((MODELS / "digits_cnn" / "images").glob("*.png"))[0]
    report = analyze(link, [image], settings=SolverSettings(steps=2, samples=2), device="cpu")
    assert report.preprocessing.source == "model card" and report.preprocessing.mean == (0.1307,)
    assert [layer.name for layer in report.layers] == ["relu_2"]
