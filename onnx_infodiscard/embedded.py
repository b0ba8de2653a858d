"""The embedded defaults in `models/`: the digits CNN for `analyze`, the cluttered digits for `localize`."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS / "digits_cnn" / "digits_cnn.onnx"
#: The localisation benchmark (`localize`): digits on cluttered photos, both polarities, distractors.
BENCHMARK_MODEL = MODELS / "cluttered_digits" / "cluttered_digits.onnx"


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
