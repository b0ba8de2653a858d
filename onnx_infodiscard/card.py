"""Model cards inside the ONNX file, so an exported model needs no flags.

A card is a JSON object (input name, layout, preprocessing, classes, suggested layers, ...). It is
read from `MODEL.onnx.json` beside the model, else from the ONNX `metadata_props` entry
`infodiscard.card` (see `preprocess.read_card`); this module writes the metadata entry, into a
copy of the model unless told to replace the input.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import InputError, close_matches
from .load import load_model
from .preprocess import CARD_SUFFIX, METADATA_KEY, read_card, resolve_preprocessing

#: `--set scale=255` is short for `--set preprocessing.scale=255`.
PREPROCESSING_FIELDS = ("scale", "mean", "std", "bgr")
#: Keys whose value is a list: a value that is not JSON is split on commas.
LIST_KEYS = {"classes", "suggested_layers", "preprocessing.mean", "preprocessing.std"}
NUMBER_LISTS = {"preprocessing.mean", "preprocessing.std"}
#: The ONNX protobuf limit; larger models keep their weights in an external data file.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class EffectiveCard:
    """The card a run of `analyze` would use, and where it came from."""

    card: dict
    source: str  # "sidecar", "metadata" or "none"
    sidecar: Path  # where a sidecar card would be (it may not exist)
    shadowed: bool  # the file also embeds a card, which the sidecar overrides


def sidecar_path(model: Path) -> Path:
    return model.with_name(model.name + CARD_SUFFIX)


def embedded_card(model: onnx.ModelProto) -> dict | None:
    """The card in `metadata_props`, or None when the file has none."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                card = json.loads(prop.value)
            except json.JSONDecodeError as err:
                raise InputError(f"metadata '{METADATA_KEY}' is not valid JSON ({err}); rewrite it with --set") from None
            if not isinstance(card, dict):
                raise InputError(f"metadata '{METADATA_KEY}' is JSON but not an object; rewrite it with --set")
            return card
    return None


def effective_card(path: str | Path) -> EffectiveCard:
    """Read the card the way the analysis does: the sidecar first, then the embedded one."""
    loaded = load_model(path)
    sidecar = sidecar_path(loaded.path)
    embedded = embedded_card(loaded.proto)
    card = read_card(loaded.path, loaded.proto)
    source = "sidecar" if sidecar.is_file() else ("metadata" if embedded is not None else "none")
    return EffectiveCard(card, source, sidecar, source == "sidecar" and embedded is not None)


def with_card(model: onnx.ModelProto, card: dict) -> onnx.ModelProto:
    """A copy of `model` whose metadata entry `infodiscard.card` holds `card` (others kept)."""
    out = copy.deepcopy(model)
    kept = [(p.key, p.value) for p in out.metadata_props if p.key != METADATA_KEY]
    del out.metadata_props[:]
    for key, value in kept:
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key=METADATA_KEY, value=json.dumps(card, separators=(",", ":")))
    return out


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` -> (dotted key, value). The value is JSON when it parses as JSON, else a string;
    list keys split a non-JSON value on commas (`classes=cat,dog`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {text!r}: write KEY=VALUE, e.g. layout=nhwc, scale=255 or suggested_layers=a,b")
    if key in PREPROCESSING_FIELDS:
        key = f"preprocessing.{key}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
        if key in LIST_KEYS:
            value = [part.strip() for part in value.split(",") if part.strip()]
    if key in NUMBER_LISTS:
        value = value if isinstance(value, list) else [value]
        try:
            value = [float(v) for v in value]
        except (TypeError, ValueError):
            raise InputError(f"--set {text!r}: {key} takes numbers, e.g. 0.485,0.456,0.406") from None
    return key, value


def updated(card: dict, sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> dict:
    """`card` with each `key=value` set and each key removed; dotted keys reach into objects."""
    card = copy.deepcopy(card)
    for text in sets:
        key, value = parse_assignment(text)
        *parents, leaf = key.split(".")
        node = card
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {text!r}: '{part}' holds a {type(child).__name__}, not an object")
            node = child
        node[leaf] = value
    for key in unsets:
        key = f"preprocessing.{key}" if key in PREPROCESSING_FIELDS else key
        *parents, leaf = key.split(".")
        node = card
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise InputError(f"--unset {key!r}: the card has no such key{close_matches(key, _keys(card))}")
        del node[leaf]
    return card


def validate(card: dict, model: onnx.ModelProto) -> None:
    """Refuse a card the analysis would refuse: bad preprocessing, an input or a layer that the
    graph does not have (named layers only: indices, globs and `auto` are checked when used)."""
    if not isinstance(card, dict):
        raise InputError("the model card must be a JSON object")
    resolve_preprocessing(card, (1, 1, 1, 1))  # unknown fields, bad layout, non-numbers
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if card.get("input") is not None and card["input"] not in inputs:
        raise InputError(f"card input '{card['input']}' is not an input of the graph{close_matches(str(card['input']), inputs)}")
    layers = card.get("suggested_layers")
    if layers is not None:
        if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
            raise InputError("card suggested_layers must be a list of layer names")
        outputs = {name for node in model.graph.node for name in node.output if name}
        for name in layers:
            if name != "auto" and not name.lstrip("-").isdigit() and not any(c in name for c in "*?[") \
                    and name not in outputs:
                raise InputError(f"card suggested layer '{name}' is not a tensor of the graph{close_matches(name, outputs)}")


def default_copy(model: Path) -> Path:
    """Where `card --set` writes when no --out is given: MODEL.card.onnx beside the model."""
    return model.with_name(model.stem + ".card" + (model.suffix or ".onnx"))


def write_card(model: str | Path, card: dict, out: str | Path) -> Path:
    """Write a copy of `model` that embeds `card`, atomically, to `out` (which may be `model`
    itself). Weights stay inside the file unless the model exceeds the protobuf limit; then they
    go to `OUT.data` beside it."""
    loaded = load_model(model)
    validate(card, loaded.proto)
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the path of the .onnx copy to write")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")
    proto = with_card(loaded.proto, card)
    external = proto.ByteSize() > PROTOBUF_LIMIT
    try:
        handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
        os.close(handle)
    except OSError as err:
        raise InputError(f"cannot write {out}: {out.parent} is not writable ({err.strerror or err})") from None
    try:
        if external:
            onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=out.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(proto, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _keys(card: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in card.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys.extend(_keys(value, prefix + key + "."))
    return keys
