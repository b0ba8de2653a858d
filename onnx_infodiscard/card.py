"""The model card: what a model needs so that `analyze MODEL` runs with no flags.

A card is one JSON object (input name, layout, preprocessing, classes, suggested layers, image
folders, provenance). It lives in `MODEL.onnx.json` beside the model (the sidecar) or in the ONNX
`metadata_props` entry `infodiscard.card`; a sidecar wins over the embedded card. `ModelCard` is
the one place that knows both places and the one schema every card is validated against, so a
wrong type is a one-line error naming the field rather than a crash deep inside the analysis.

A model given through a symlink keeps its card: the sidecar beside the link is read first (so a
user can override a card without touching the real file), then the one beside the real file, then
the embedded card. Paths in a card (`images`, `train_images`, `foreground_boxes`) are relative to
the card's folder (the sidecar's, or the real model file's for an embedded card) and must stay
inside it, as external data must; only the shipped models may share folders among themselves.

Editing a card and writing it into a model (`infodiscard card`) is `card_edit.py`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

import onnx

from .card_schema import PATH_FIELDS, PREPROCESSING_SCHEMA, SCHEMA, TEXT_FIELDS, check_object, shown
from .errors import InputError, close_matches

METADATA_KEY = "infodiscard.card"
CARD_SUFFIX = ".json"  # the card of MODEL.onnx is MODEL.onnx.json
#: A card is a few hundred bytes; anything this large is not one.
MAX_CARD_BYTES = 1 << 20


@dataclass(frozen=True)
class CardPreprocessing:
    """The card's `preprocessing` object; None = not given (the default or a flag applies)."""

    preset: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool | None = None


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. Fields are None when the card does not give them.

    `source` ("sidecar", "metadata" or "none"), `location` (the sidecar or model file read) and
    `folder` (where its relative paths start) say where it came from; they are not card fields.
    """

    input: str | None = None
    layout: str | None = None
    preprocessing: CardPreprocessing = CardPreprocessing()
    classes: tuple[str, ...] | None = None
    suggested_layers: tuple[str, ...] | None = None
    images: str | None = None
    train_images: str | None = None
    foreground_boxes: str | None = None
    test_accuracy: float | None = None
    n_test: int | None = None
    text: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    source: str = field(default="none", compare=False)
    location: Path | None = field(default=None, compare=False)
    folder: Path | None = field(default=None, compare=False)

    # --- reading -------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: object, where: str = "", **origin) -> ModelCard:
        """Validate a parsed card (`where` says where it came from, for errors)."""
        suffix = f" ({where})" if where else ""
        if not isinstance(data, dict):
            kind = {list: "a list", str: "a string"}.get(type(data), shown(data))
            raise InputError(f"the model card must be a JSON object, got {kind}{suffix}")
        values = check_object(data, SCHEMA, "", suffix)
        pre = check_object(values.pop("preprocessing", {}), PREPROCESSING_SCHEMA, "preprocessing.", suffix)
        text = MappingProxyType({key: values.pop(key) for key in TEXT_FIELDS if key in values})
        return cls(preprocessing=CardPreprocessing(**pre), text=text, **values, **origin)

    @classmethod
    def for_model(cls, path: str | Path, proto: onnx.ModelProto) -> ModelCard:
        """The card a run on `path` uses: the sidecar (beside the path given, else beside the real
        file), else the embedded card, else an empty card. Its paths are checked to stay inside."""
        data, source, location = read_raw(path, proto)
        if data is None:
            return cls(folder=Path(os.path.realpath(path)).parent)
        where = f"sidecar {location}" if source == "sidecar" else f"metadata '{METADATA_KEY}' of {location}"
        folder = Path(os.path.abspath(location)).parent
        card = cls.from_json(data, where, source=source, location=location, folder=folder)
        for key in PATH_FIELDS:
            if getattr(card, key) is not None:
                card.image_folder(path, key)
        return card

    # --- using ---------------------------------------------------------------------------------

    def image_folder(self, model_path: str | Path, key: str = "images") -> Path:
        """The file or folder the card names under `key`, refused when it leaves the card's folder."""
        if key not in PATH_FIELDS:
            raise InputError(f"'{key}' is not a path field of the card{close_matches(key, PATH_FIELDS)}")
        value = getattr(self, key)
        if value is None:
            raise InputError(f"the card of {Path(model_path).name} names no '{key}'")
        folder = self.folder or Path(os.path.realpath(model_path)).parent
        target = Path(os.path.normpath(folder / value))
        root = confinement_root(folder)
        if not Path(os.path.realpath(target)).is_relative_to(root):
            raise InputError(
                f"card field '{key}' is {value!r}, which leaves the model's folder {root}; keep it "
                f"inside that folder or give the files explicitly"
            )
        return target

    def is_empty(self) -> bool:
        return not self.to_json()

    def to_json(self) -> dict:
        """The card as the JSON object stored on disk (only the fields it gives)."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("source", "location", "folder") or value is None:
                continue
            if f.name == "preprocessing":
                pre = {k.name: _plain(getattr(value, k.name)) for k in fields(value)}
                value = {k: v for k, v in pre.items() if v is not None} or None
            elif f.name == "text":
                out.update(value)
                continue
            if value is not None:
                out[f.name] = _plain(value)
        return out

    def get(self, key: str, default: object = None) -> object:
        """The JSON value of a top-level key, for code that reads the card by name."""
        return self.to_json().get(key, default)

    def __getitem__(self, key: str) -> object:
        return self.to_json()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def with_updates(self, sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> ModelCard:
        """This card with each `key=value` set and each key removed, validated again."""
        from .card_edit import updated_json  # card_edit builds on this module

        new = updated_json(self.to_json(), sets, unsets)
        return ModelCard.from_json(new, source=self.source, location=self.location, folder=self.folder)

    def check_against(self, model: onnx.ModelProto) -> None:
        """Refuse an input or a named layer the graph does not have (indices, globs and `auto` are
        checked when they are used)."""
        initializers = {init.name for init in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in initializers]
        if self.input is not None and self.input not in inputs:
            raise InputError(
                f"card input '{self.input}' is not an input of the graph{close_matches(self.input, inputs)}"
            )
        outputs = {name for node in model.graph.node for name in node.output if name}
        for name in self.suggested_layers or ():
            pattern = name == "auto" or name.lstrip("-").isdigit() or any(c in name for c in "*?[")
            if not pattern and name not in outputs:
                raise InputError(
                    f"card suggested layer '{name}' is not a tensor of the graph{close_matches(name, outputs)}"
                )

    def embedded_in(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` whose metadata entry holds this card (other entries kept)."""
        return with_card(model, self.to_json())


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def confinement_root(folder: Path) -> Path:
    """The folder a card's paths must stay in: its own, or the shipped models' root for them."""
    from .embedded import shipped_models_roots

    real = Path(os.path.realpath(folder))
    return next((root for root in shipped_models_roots() if real.is_relative_to(root)), real)


# --- the two places a card lives ---------------------------------------------------------------


def sidecar_path(model: Path) -> Path:
    return Path(model).with_name(Path(model).name + CARD_SUFFIX)


def _strict_object(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InputError(f"the model card gives {repeated[0]!r} twice; keep one")
    return dict(pairs)


def _parse(text: str, where: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_strict_object)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err}); fix or remove the model card") from None
    except InputError as err:
        raise InputError(f"{where}: {err.message}") from None


def embedded_card(model: onnx.ModelProto) -> dict | None:
    """The JSON object in `metadata_props`, or None when the file has none (not validated)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            card = _parse(prop.value, f"metadata '{METADATA_KEY}'")
            if not isinstance(card, dict):
                raise InputError(f"metadata '{METADATA_KEY}' is JSON but not an object; rewrite the card")
            return card
    return None


def read_raw(path: str | Path, proto: onnx.ModelProto) -> tuple[dict | None, str, Path | None]:
    """(card JSON or None, source, the file read): not validated, so a broken card can be fixed."""
    from .images import regular_file

    given = Path(os.path.abspath(path))
    for model in dict.fromkeys([given, Path(os.path.realpath(given))]):
        sidecar = sidecar_path(model)
        if os.path.lexists(sidecar):
            regular_file(sidecar, "model card", MAX_CARD_BYTES)
            try:
                text = sidecar.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"{sidecar}: cannot read the model card ({err}); fix or remove it") from None
            data = _parse(text, str(sidecar))
            if not isinstance(data, dict):
                ModelCard.from_json(data, f"sidecar {sidecar}")  # raises: not an object
            return data, "sidecar", sidecar
    embedded = embedded_card(proto)
    return (embedded, "metadata", Path(os.path.realpath(given))) if embedded is not None else (None, "none", None)


def with_card(model: onnx.ModelProto, card: dict) -> onnx.ModelProto:
    """A copy of `model` whose metadata entry `infodiscard.card` holds `card` (others kept)."""
    out = copy.deepcopy(model)
    kept = [(p.key, p.value) for p in out.metadata_props if p.key != METADATA_KEY]
    del out.metadata_props[:]
    for key, value in kept:
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key=METADATA_KEY, value=json.dumps(card, separators=(",", ":")))
    return out
