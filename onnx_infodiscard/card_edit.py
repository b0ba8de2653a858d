"""Editing a model card (`card --set/--unset`) and writing it into a copy of the model
(`infodiscard card`). Reading and validating a card is `card.py`.
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

from .card import ModelCard, embedded_card, read_raw, sidecar_path
from .card_schema import PREPROCESSING_SCHEMA
from .errors import InputError, close_matches

#: The ONNX protobuf limit; larger models keep their weights in an external data file.
PROTOBUF_LIMIT = 2**31 - 1

# --- editing (`card --set/--unset`) ------------------------------------------------------------

#: `scale=255` is short for `preprocessing.scale=255`.
PREPROCESSING_FIELDS = tuple(PREPROCESSING_SCHEMA)
#: Keys whose value is a list: a value that is not JSON is split on commas.
LIST_KEYS = {"classes", "suggested_layers", "preprocessing.mean", "preprocessing.std"}
NUMBER_LISTS = {"preprocessing.mean", "preprocessing.std"}


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` -> (dotted key, value). The value is JSON when it parses as JSON, else a string;
    list keys split a non-JSON value on commas (`classes=cat,dog`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(
            f"{text!r}: write KEY=VALUE, e.g. layout=nhwc, scale=255 or suggested_layers=a,b", option="set"
        )
    if key in PREPROCESSING_FIELDS:
        key = f"preprocessing.{key}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
        if key in LIST_KEYS:
            value = [part.strip() for part in value.split(",") if part.strip()]
    if key in NUMBER_LISTS:
        items = value if isinstance(value, list) else [value]
        try:
            if any(isinstance(v, bool) for v in items):
                raise ValueError
            value = [float(v) for v in items]
        except (TypeError, ValueError):
            raise InputError(f"{text!r}: {key} takes numbers, e.g. 0.485,0.456,0.406", option="set") from None
    return key, value


def updated_json(card: dict, sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> dict:
    """`card` with each `key=value` set and each key removed; dotted keys reach into objects."""
    card = copy.deepcopy(card)
    for text in sets:
        key, value = parse_assignment(text)
        *parents, leaf = key.split(".")
        node = card
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"{text!r}: '{part}' holds a {type(child).__name__}, not an object", option="set")
            node = child
        node[leaf] = value
    for key in unsets:
        key = f"preprocessing.{key}" if key in PREPROCESSING_FIELDS else key
        *parents, leaf = key.split(".")
        node = card
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise InputError(f"{key!r}: the card has no such key{close_matches(key, _keys(card))}", option="unset")
        del node[leaf]
    return card


def _keys(card: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in card.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys.extend(_keys(value, prefix + key + "."))
    return keys


def updated(card: dict, sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> dict:
    """`updated_json`, then validated: the card JSON `card --set/--unset` would write."""
    new = updated_json(card, sets, unsets)
    ModelCard.from_json(new)
    return new


def validate(card: dict | ModelCard, model: onnx.ModelProto) -> ModelCard:
    """Refuse a card the analysis would refuse: the schema, then the input and named layers."""
    checked = card if isinstance(card, ModelCard) else ModelCard.from_json(card)
    checked.check_against(model)
    return checked


# --- showing and writing (`infodiscard card`) --------------------------------------------------


@dataclass(frozen=True)
class EffectiveCard:
    """The card JSON a run of `analyze` would use (not validated, so it can be shown and fixed)."""

    card: dict
    source: str  # "sidecar", "metadata" or "none"
    sidecar: Path  # where a sidecar card would be, or the one read (it may not exist)
    shadowed: bool  # the file also embeds a card, which the sidecar overrides


def effective_card(path: str | Path) -> EffectiveCard:
    """Read the card the way the analysis does: a sidecar first, then the embedded one."""
    from .load import load_model

    loaded = load_model(path)
    data, source, location = read_raw(path, loaded.proto)
    sidecar = location if source == "sidecar" else sidecar_path(Path(os.path.abspath(path)))
    shadowed = source == "sidecar" and embedded_card(loaded.proto) is not None
    return EffectiveCard(data or {}, source, sidecar, shadowed)


def default_copy(model: Path) -> Path:
    """Where `card --set` writes when no --out is given: MODEL.card.onnx beside the model."""
    return model.with_name(model.stem + ".card" + (model.suffix or ".onnx"))


def write_card(model: str | Path, card: dict | ModelCard, out: str | Path) -> Path:
    """Write a copy of `model` that embeds `card`, atomically, to `out` (which may be `model`
    itself). Weights stay inside the file unless the model exceeds the protobuf limit; then they
    go to `OUT.data` beside it."""
    from .load import load_model

    loaded = load_model(model)
    checked = validate(card, loaded.proto)
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.is_dir():
        raise InputError(f"{out} is a folder; give the path of the .onnx copy to write", option="out")
    if not out.parent.is_dir():
        raise InputError(
            f"{out}: the folder {out.parent} does not exist; create it or choose another path", option="out"
        )
    proto = checked.embedded_in(loaded.proto)
    try:
        handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
        os.close(handle)
    except OSError as err:
        raise InputError(f"cannot write {out}: {out.parent} is not writable ({err.strerror or err})") from None
    try:
        if proto.ByteSize() > PROTOBUF_LIMIT:
            onnx.save_model(
                proto,
                tmp,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=out.name + ".data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
