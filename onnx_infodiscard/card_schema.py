"""The one schema of a model card: each field's type and range, and errors that name the field.

`card.ModelCard.from_json` applies it; nothing else reads card JSON by hand.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping

from .errors import InputError

LAYOUTS = ("nchw", "nhwc")
#: Card fields naming files or folders relative to the card, confined to its folder.
PATH_FIELDS = ("images", "train_images", "foreground_boxes")
#: Free-text provenance fields: kept and shown, never interpreted.
TEXT_FIELDS = (
    "exporter",
    "dataset",
    "task",
    "package",
    "licence",
    "preprocessing_note",
    "note",
    "description",
    "license",
    "source",
    "name",
    "citation",
    "url",
)


def shown(value: object) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class Field:
    """Checks one card field and returns its typed value; `path` names it in errors."""

    def __init__(self, what: str, check, convert=lambda v: v) -> None:
        self.what, self.check, self.convert = what, check, convert

    def __call__(self, path: str, value: object, where: str) -> object:
        if value is None or not self.check(value):
            hint = ""
            if isinstance(value, str) and "list of non-empty strings" in self.what:
                hint = f" (a string; write [{json.dumps(value)}])"
            elif value is None:
                hint = " (remove the key to use the default)"
            raise InputError(f"card field '{path}' must be {self.what}, got {shown(value)}{hint}{where}")
        return self.convert(value)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: object, positive: bool = False) -> bool:
    items = v if isinstance(v, list) else [v]
    return bool(items) and all(_is_number(x) and (not positive or x > 0) for x in items)


def _as_tuple(v: object) -> tuple:
    return tuple(float(x) for x in v) if isinstance(v, list) else (float(v),)


def _relative(v: object) -> bool:
    return isinstance(v, str) and v.strip() != "" and not os.path.isabs(v) and "\0" not in v


def _preset(v: object) -> bool:
    from .preprocess import PRESETS  # preprocess builds on this module

    return isinstance(v, str) and v in PRESETS


_TEXT = Field("a string", lambda v: isinstance(v, str))
_NAME = Field("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
_NAMES = Field(
    "a list of non-empty strings",
    lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v),
    tuple,
)
_PATH = Field("a relative path inside the model's folder", _relative)
PREPROCESSING_SCHEMA: dict[str, Field] = {
    "preset": Field("one of the presets imagenet, tf, raw01, raw255", _preset),
    "scale": Field("a finite number > 0", lambda v: _is_number(v) and v > 0, float),
    "mean": Field("a list of finite numbers", _numbers, _as_tuple),
    "std": Field("a list of finite numbers > 0", lambda v: _numbers(v, positive=True), _as_tuple),
    "bgr": Field("true or false", lambda v: isinstance(v, bool)),
}
SCHEMA: dict[str, Field] = {
    "input": _NAME,
    "layout": Field("'nchw' or 'nhwc'", lambda v: isinstance(v, str) and v.lower() in LAYOUTS, str.lower),
    "preprocessing": Field("an object with " + ", ".join(PREPROCESSING_SCHEMA), lambda v: isinstance(v, dict)),
    "classes": _NAMES,
    "suggested_layers": _NAMES,
    **{key: _PATH for key in PATH_FIELDS},
    "test_accuracy": Field("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1, float),
    "n_test": Field("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    **{key: _TEXT for key in TEXT_FIELDS},
}


def check_object(data: dict, schema: Mapping[str, Field], prefix: str, suffix: str) -> dict:
    """Each value of `data` checked by its field in `schema`; an unknown key names the closest."""
    unknown = [key for key in data if key not in schema]
    if unknown:
        key = unknown[0]
        names = {k: prefix + k for k in schema}
        if not prefix:  # `scale` at the top level means preprocessing.scale
            names.update({k: f"preprocessing.{k}" for k in PREPROCESSING_SCHEMA if k not in schema})
        close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5) or difflib.get_close_matches(
            key, list(names), n=3, cutoff=0.0
        )
        hint = "; did you mean " + ", ".join(repr(names[k]) for k in close) + "?" if close else ""
        raise InputError(f"card field '{prefix}{key}' is not a known field{hint}{suffix}")
    return {key: schema[key](prefix + key, value, suffix) for key, value in data.items()}
