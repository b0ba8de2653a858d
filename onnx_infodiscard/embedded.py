"""The embedded defaults: the digits CNN for `analyze`, the cluttered digits for `localize`.

The shipped models live in the top-level `models/` folder, which the wheel installs as the package
`onnx_infodiscard_models` (package data, read with `importlib.resources`), so an installed tool
has its defaults; a source checkout without an install reads the folder itself.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from pathlib import Path

from .errors import InputError

PACKAGE = "onnx_infodiscard_models"


def shipped_models_roots() -> list[Path]:
    """Folders holding the shipped models (real paths): the installed package, then the source
    checkout's `models/` when this module runs from one."""
    roots = []
    if importlib.util.find_spec(PACKAGE) is not None:
        root = resources.files(PACKAGE)
        if isinstance(root, Path) and root.is_dir():
            roots.append(Path(os.path.realpath(root)))
    checkout = Path(__file__).resolve().parent.parent / "models"
    if (checkout / "__init__.py").is_file() and (checkout / "digits_cnn").is_dir() and checkout not in roots:
        roots.append(checkout)
    return roots


def shipped_models_root() -> Path | None:
    """The folder the embedded defaults are read from, or None when it is not there."""
    roots = shipped_models_roots()
    return roots[0] if roots else None


def _shipped(folder: str) -> Path:
    root = shipped_models_root()
    return (root if root is not None else Path(PACKAGE)) / folder / f"{folder}.onnx"


MODELS = shipped_models_root()
DEFAULT_MODEL = _shipped("digits_cnn")
#: The localisation benchmark (`localize`): digits on cluttered photos, both polarities, distractors.
BENCHMARK_MODEL = _shipped("cluttered_digits")


def default_model() -> Path:
    """The embedded default of `analyze`, refused with the fix when the install lacks it."""
    return _installed(DEFAULT_MODEL, "embedded default model", "reinstall onnx-infodiscard or give a MODEL")


def benchmark_model() -> Path:
    """The shipped localisation benchmark of `localize`, refused with the fix when the install lacks it."""
    fix = "install from a source checkout (pip install -e .) or give a MODEL with --images and --boxes"
    return _installed(BENCHMARK_MODEL, "shipped localisation benchmark", fix)


def _installed(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise InputError(f"the {what} {path} is missing from this install; {fix}")
    return path


def card_images(model: Path, card, key: str = "images") -> list[Path]:
    """The image folder a model card names (`images`, `train_images`), for runs that give none.

    `card` is a `ModelCard` (its paths are confined to its folder) or, for older callers, its JSON."""
    from .card import ModelCard

    if not isinstance(card, ModelCard):
        card = ModelCard.from_json(card, folder=Path(os.path.realpath(model)).parent)
    if getattr(card, key, None) is None:
        what = "training images" if key == "train_images" else "images"
        raise InputError(f"no {what} given and the card of {Path(model).name} names none; pass image files or a folder")
    return [card.image_folder(model, key)]
