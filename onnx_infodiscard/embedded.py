"""The embedded default: the project's own digits CNN and its held-out images, in `models/`."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS / "digits_cnn" / "digits_cnn.onnx"


def default_model() -> Path:
    if not DEFAULT_MODEL.is_file():
        raise InputError(
            f"the embedded default model {DEFAULT_MODEL} is missing; install from a source checkout "
            "(pip install -e .) or give a MODEL"
        )
    return DEFAULT_MODEL


def card_images(model: Path, card: dict, key: str = "images") -> list[Path]:
    """The image folder a model card names (`images`, `train_images`), for runs that give none."""
    folder = card.get(key)
    if not folder:
        what = "training images (--train-images)" if key == "train_images" else "images"
        raise InputError(f"no {what} given and the card of {model.name} names none; pass image files or a folder")
    return [model.parent / folder]
