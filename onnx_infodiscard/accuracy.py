"""A model's accuracy on labelled images, with onnxruntime on the ORIGINAL graph (issue #17).

Accuracy sits beside the information metrics so that a study can ask whether they go together
(`concentration ~ accuracy`). It is measured on the file as shipped, not on the converted module,
so that a conversion problem cannot make a model look better or worse than it is. The images go
through the same canonical space and preprocessing (`Preprocess`, from the card) as the analysis.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, close_matches
from .files import regular_file
from .images import MAX_CSV_BYTES, find_images, load_images
from .load import load_model
from .preprocess import Preprocess, Preprocessing, canonical_shape, read_card, resolve_preprocessing

BATCH = 64


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy of one model on labelled images (a fraction in [0, 1])."""

    model: str
    images: tuple[str, ...]  # file names, in the order of `predicted`
    labels: tuple[int, ...]  # class indices
    predicted: tuple[int, ...]  # argmax of the model's first output
    accuracy: float

    @property
    def correct(self) -> np.ndarray:
        """Per image: the prediction equals the label (bool array, in the order of `images`)."""
        return np.asarray(self.predicted) == np.asarray(self.labels)

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "n_images": len(self.images),
            "n_correct": self.n_correct,
            "accuracy": self.accuracy,
        }


def read_labels(path: str | Path) -> dict[str, str]:
    """`file,label` from a CSV with a header (a boxes CSV's `label` column works; other columns ignored).

    Labels stay text here: a class index or a class name, resolved per model by `resolve_labels`.
    """
    path = Path(path)
    try:
        regular_file(path, "labels CSV", MAX_CSV_BYTES)
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark is fine
            rows = list(csv.DictReader(handle))
    except InputError as err:
        raise InputError(err.message, option="labels") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the labels CSV ({err})", option="labels") from None
    columns = {c.strip() for c in (rows[0].keys() if rows else []) if c}
    missing = [c for c in ("file", "label") if c not in columns]
    if missing:
        raise InputError(
            f"{path}: the labels CSV lacks columns {missing}; its header needs file,label", option="labels"
        )
    labels = {}
    for row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if row["file"] and row["label"]:
            labels[row["file"]] = row["label"]
    return labels


def resolve_labels(raw: Mapping[str, str], classes: Sequence[str] | None, images: Sequence[str]) -> list[int]:
    """Each image's class index; a label is an index or a name from the card's `classes`."""
    missing = [name for name in images if name not in raw]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"no label for {len(missing)} of {len(images)} images ({shown}); add a file,label row for each",
            option="labels",
        )
    names = [str(c) for c in classes] if classes else []
    out = []
    for name in images:
        text = raw[name]
        if text in names:
            out.append(names.index(text))
        elif text.lstrip("-").isdigit() and (not names or 0 <= int(text) < len(names)):
            out.append(int(text))
        else:
            hint = close_matches(text, names) if names else "; give a class index (the card has no classes)"
            raise InputError(
                f"label {text!r} of {name} is neither a class index nor a class name{hint}", option="labels"
            )
    return out


def accuracy(
    model: str | Path,
    images: Sequence[str | Path],
    labels: Mapping[str, str],
    *,
    input_name: str | None = None,
    preprocessing: Preprocessing | None = None,
    preprocessing_overrides: dict | None = None,
) -> Accuracy:
    """Top-1 accuracy of `model` (original graph, onnxruntime CPU) on `images` labelled by `labels`.

    `labels` maps a file name to its class index or class name (`read_labels`). Preprocessing:
    `preprocessing` as given, else the card with `preprocessing_overrides` on top (as `analyze`).
    """
    import onnxruntime as ort

    from .session import model_input_shape

    path = Path(model)
    loaded = load_model(path)
    card = read_card(path, loaded.proto)
    input_name = input_name or card.get("input")
    shape = model_input_shape(loaded.proto, input_name, None)
    if preprocessing is None:
        flags = {k: v for k, v in (preprocessing_overrides or {}).items() if v is not None}
        preprocessing = resolve_preprocessing(card, shape, **flags)
    c, h, w = canonical_shape(shape, preprocessing.layout)
    canonical = load_images(find_images(images), (c, h, w))
    names = [image.name for image in canonical]
    targets = resolve_labels(labels, card.get("classes"), names)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(loaded.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = [i for i in session.get_inputs() if input_name is None or i.name == input_name]
    if not feeds:
        raise InputError(f"the model has no input {input_name!r}", option="input_name")
    fixed_batch = isinstance(feeds[0].shape[0], int) and feeds[0].shape[0] == 1
    step = 1 if fixed_batch else BATCH
    prep = Preprocess(preprocessing, c)
    predicted: list[int] = []
    for start in range(0, len(canonical), step):
        batch = torch.from_numpy(np.stack([im.pixels for im in canonical[start : start + step]]))
        with torch.no_grad():
            x = prep(batch).numpy().astype(np.float32)
        logits = np.asarray(session.run(None, {feeds[0].name: x})[0])
        predicted.extend(int(v) for v in logits.reshape(len(x), -1).argmax(1))
    acc = float(np.mean(np.asarray(predicted) == np.asarray(targets))) if targets else float("nan")
    return Accuracy(str(path), tuple(names), tuple(targets), tuple(predicted), acc)
